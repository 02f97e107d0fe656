// Renders a parsed template (jinja_ast.h) with jinja2's semantics where chat templates can see them:
// Python truthiness, equality and str(); undefined values that print as "" but fail when used as an
// object; a scope per for-loop iteration and per macro call (so `set` inside a loop does not leak,
// which is why templates use namespace()); macros that see the template's top-level variables.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <ctime>
#include <map>
#include <unordered_map>

#include <utf8proc.h>

#include "tokenizer/jinja_ast.h"
#include "tokenizer/jinja_template.h"

namespace uberlm {

namespace jinja {
namespace {

constexpr int kMaxMacroDepth = 16;  // macro calls in progress; with kMaxNesting, bounds the stack
constexpr int64_t kMaxRepeatedBytes = int64_t{1} << 26;  // 'x' * n: a prompt is never this long

[[noreturn]] void render_error(int line, const std::string& message) {
  throw TemplateError(fmt::format("chat template line {}: {}", line, message));
}

struct Value;
using NamespaceObject = std::map<std::string, Value>;

struct Value {
  enum class Kind { Undefined, Data, Namespace, Macro, Function };
  Kind kind = Kind::Undefined;
  std::shared_ptr<const JsonValue> data;
  std::shared_ptr<NamespaceObject> attributes;  // Namespace: shared, so `set ns.x` is seen by every holder
  const Node* macro = nullptr;
  std::string name;  // Undefined: the expression that had no value; Function: the global's name

  static Value of(JsonValue json) {
    Value value;
    value.kind = Kind::Data;
    value.data = std::make_shared<const JsonValue>(std::move(json));
    return value;
  }
  static Value undefined(std::string what) {
    Value value;
    value.name = std::move(what);
    return value;
  }
  static Value function(std::string name) {
    Value value;
    value.kind = Kind::Function;
    value.name = std::move(name);
    return value;
  }
  bool is_undefined() const { return kind == Kind::Undefined; }
  bool is_data() const { return kind == Kind::Data; }
  const JsonValue& json() const { return *data; }
};

const char* type_name(const Value& value) {
  if (value.kind == Value::Kind::Undefined) return "undefined";
  if (value.kind == Value::Kind::Namespace) return "namespace";
  if (value.kind != Value::Kind::Data) return "function";
  switch (value.json().type()) {
    case JsonValue::value_t::null: return "none";
    case JsonValue::value_t::boolean: return "bool";
    case JsonValue::value_t::string: return "str";
    case JsonValue::value_t::array: return "list";
    case JsonValue::value_t::object: return "dict";
    case JsonValue::value_t::number_float: return "float";
    default: return "int";
  }
}

// str(value) as {{ }} prints it.
std::string to_text(const Value& value) {
  switch (value.kind) {
    case Value::Kind::Undefined: return "";
    case Value::Kind::Data: return python_str(value.json());
    case Value::Kind::Namespace: return "<Namespace>";
    default: return "<function " + value.name + ">";
  }
}

bool truthy(const Value& value) {
  if (value.kind == Value::Kind::Undefined) return false;
  if (value.kind != Value::Kind::Data) return true;
  const JsonValue& json = value.json();
  switch (json.type()) {
    case JsonValue::value_t::null: return false;
    case JsonValue::value_t::boolean: return json.get<bool>();
    case JsonValue::value_t::string: return !json.get_ref<const std::string&>().empty();  // json::empty() is false for strings
    case JsonValue::value_t::array:
    case JsonValue::value_t::object: return !json.empty();
    case JsonValue::value_t::number_float: return json.get<double>() != 0.0;
    default: return json.get<int64_t>() != 0;
  }
}

// Python counts bools as numbers (True == 1, True + 1 == 2).
bool is_numeric(const JsonValue& json) { return json.is_number() || json.is_boolean(); }
double as_double(const JsonValue& json) { return json.is_boolean() ? (json.get<bool>() ? 1.0 : 0.0) : json.get<double>(); }
bool is_integral(const JsonValue& json) { return json.is_boolean() || json.is_number_integer(); }
int64_t as_int(const JsonValue& json) { return json.is_boolean() ? (json.get<bool>() ? 1 : 0) : json.get<int64_t>(); }

bool python_equal(const JsonValue& a, const JsonValue& b) {
  if (is_numeric(a) && is_numeric(b)) {
    return is_integral(a) && is_integral(b) ? as_int(a) == as_int(b) : as_double(a) == as_double(b);
  }
  if (a.type() != b.type()) return false;
  if (a.is_array()) {
    if (a.size() != b.size()) return false;
    for (size_t i = 0; i < a.size(); ++i) {
      if (!python_equal(a[i], b[i])) return false;
    }
    return true;
  }
  if (a.is_object()) {  // dicts compare without regard to order
    if (a.size() != b.size()) return false;
    for (const auto& item : a.items()) {
      auto other = b.find(item.key());
      if (other == b.end() || !python_equal(item.value(), *other)) return false;
    }
    return true;
  }
  return a == b;
}

bool values_equal(const Value& a, const Value& b) {
  if (a.is_data() && b.is_data()) return python_equal(a.json(), b.json());
  if (a.kind != b.kind) return false;
  if (a.kind == Value::Kind::Undefined) return true;
  if (a.kind == Value::Kind::Namespace) return a.attributes == b.attributes;
  return a.macro == b.macro && a.name == b.name;
}

size_t code_point_count(const std::string& text) { return utf8_decode(text).size(); }

// Python's slice.indices(): the positions a[start:stop:step] visits.
std::vector<int64_t> slice_positions(int64_t length, std::optional<int64_t> start, std::optional<int64_t> stop,
                                     int64_t step, int line) {
  if (step == 0) render_error(line, "slice step cannot be zero");
  auto clamp = [&](std::optional<int64_t> bound, int64_t fallback) {
    if (!bound) return fallback;
    int64_t at = *bound < 0 ? *bound + length : *bound;
    if (step > 0) return std::clamp<int64_t>(at, 0, length);
    return std::clamp<int64_t>(at, -1, length - 1);
  };
  const int64_t begin = clamp(start, step > 0 ? 0 : length - 1);
  const int64_t end = clamp(stop, step > 0 ? length : -1);
  std::vector<int64_t> positions;
  for (int64_t i = begin; step > 0 ? i < end : i > end; i += step) positions.push_back(i);
  return positions;
}

std::u32string strip_set(const Value* chars) {
  return chars == nullptr || !chars->is_data() || chars->json().is_null() ? std::u32string()
                                                                            : utf8_decode(chars->json().get<std::string>());
}

// str.strip / lstrip / rstrip: whitespace, or the code points of `chars`.
std::string python_strip(const std::string& text, const Value* chars, bool left, bool right) {
  const std::u32string set = strip_set(chars);
  const bool whitespace = chars == nullptr || !chars->is_data() || chars->json().is_null();
  auto strippable = [&](char32_t c) { return whitespace ? python_is_space(c) : set.find(c) != std::u32string::npos; };
  const std::u32string code_points = utf8_decode(text);
  size_t begin = 0, end = code_points.size();
  while (left && begin < end && strippable(code_points[begin])) ++begin;
  while (right && end > begin && strippable(code_points[end - 1])) --end;
  return utf8_encode(std::u32string_view(code_points).substr(begin, end - begin));
}

JsonValue python_split(const std::string& text, const Value* separator, int64_t max_split, int line) {
  JsonValue parts = JsonValue::array();
  if (separator == nullptr || !separator->is_data() || separator->json().is_null()) {
    const std::u32string code_points = utf8_decode(text);
    size_t i = 0;
    while (true) {
      while (i < code_points.size() && python_is_space(code_points[i])) ++i;
      if (i == code_points.size()) break;
      if (max_split >= 0 && static_cast<int64_t>(parts.size()) == max_split) {
        size_t end = code_points.size();
        while (end > i && python_is_space(code_points[end - 1])) --end;
        parts.push_back(utf8_encode(std::u32string_view(code_points).substr(i, end - i)));
        break;
      }
      size_t end = i;
      while (end < code_points.size() && !python_is_space(code_points[end])) ++end;
      parts.push_back(utf8_encode(std::u32string_view(code_points).substr(i, end - i)));
      i = end;
    }
    return parts;
  }
  if (!separator->json().is_string()) render_error(line, "split() separator must be a string");
  const std::string& sep = separator->json().get_ref<const std::string&>();
  if (sep.empty()) render_error(line, "split() separator must not be empty");
  size_t at = 0;
  while (max_split < 0 || static_cast<int64_t>(parts.size()) < max_split) {
    const size_t found = text.find(sep, at);
    if (found == std::string::npos) break;
    parts.push_back(text.substr(at, found - at));
    at = found + sep.size();
  }
  parts.push_back(text.substr(at));
  return parts;
}

// str.upper() / str.lower(): utf8proc's simple case mapping, plus the one full mapping Python applies
// that text commonly meets (German sharp s upper-cases to "SS").
std::string map_case(const std::string& text, bool upper) {
  std::u32string mapped;
  for (const char32_t c : utf8_decode(text)) {
    if (upper && c == U'\u00DF') {
      mapped += U"SS";
      continue;
    }
    mapped += static_cast<char32_t>(upper ? utf8proc_toupper(static_cast<utf8proc_int32_t>(c))
                                          : utf8proc_tolower(static_cast<utf8proc_int32_t>(c)));
  }
  return utf8_encode(mapped);
}

std::string replace_all(const std::string& text, const std::string& from, const std::string& to, int64_t count) {
  if (from.empty()) return text;
  std::string out;
  size_t at = 0;
  for (int64_t done = 0; count < 0 || done < count; ++done) {
    const size_t found = text.find(from, at);
    if (found == std::string::npos) break;
    out += text.substr(at, found - at) + to;
    at = found + from.size();
  }
  return out + text.substr(at);
}

// Arguments of a call, filter or test after evaluation.
struct Arguments {
  std::vector<Value> positional;
  std::vector<std::pair<std::string, Value>> named;

  // The argument at `index` or named `name`, or null when absent.
  const Value* get(size_t index, std::string_view name) const {
    if (index < positional.size()) return &positional[index];
    for (const auto& [key, value] : named) {
      if (key == name) return &value;
    }
    return nullptr;
  }
};

class Scope {
 public:
  explicit Scope(const Scope* parent) : parent_(parent) {}
  const Value* find(const std::string& name) const {
    for (const Scope* scope = this; scope != nullptr; scope = scope->parent_) {
      auto it = scope->variables_.find(name);
      if (it != scope->variables_.end()) return &it->second;
    }
    return nullptr;
  }
  void set(const std::string& name, Value value) { variables_[name] = std::move(value); }

 private:
  std::unordered_map<std::string, Value> variables_;
  const Scope* parent_;
};

enum class Flow { Normal, Break, Continue };

class Renderer {
 public:
  explicit Renderer(const JsonValue& context) : globals_(nullptr) {
    for (const char* builtin : {"raise_exception", "namespace", "strftime_now"}) globals_.set(builtin, Value::function(builtin));
    for (const auto& item : context.items()) globals_.set(item.key(), Value::of(item.value()));
  }

  std::string render(const Node& root) {
    std::string out;
    run(root.body, globals_, out);
    return out;
  }

 private:
  Flow run(const std::vector<Node>& nodes, Scope& scope, std::string& out) {
    for (const Node& node : nodes) {
      const Flow flow = run(node, scope, out);
      if (flow != Flow::Normal) return flow;
    }
    return Flow::Normal;
  }

  Flow run(const Node& node, Scope& scope, std::string& out) {
    switch (node.kind) {
      case Node::Kind::Sequence: return run(node.body, scope, out);
      case Node::Kind::Text: out += node.text; return Flow::Normal;
      case Node::Kind::Output: out += to_text(eval(*node.value, scope)); return Flow::Normal;
      case Node::Kind::If:
        for (const Node& branch : node.body) {
          if (branch.condition == nullptr || truthy(eval(*branch.condition, scope))) return run(branch.body, scope, out);
        }
        return Flow::Normal;
      case Node::Kind::For: run_for(node, scope, out); return Flow::Normal;
      case Node::Kind::Set: run_set(node, scope); return Flow::Normal;
      case Node::Kind::Macro: {
        Value macro;
        macro.kind = Value::Kind::Macro;
        macro.macro = &node;
        macro.name = node.name;
        scope.set(node.name, std::move(macro));
        return Flow::Normal;
      }
      case Node::Kind::Break: return Flow::Break;
      case Node::Kind::Continue: return Flow::Continue;
    }
    return Flow::Normal;
  }

  std::vector<JsonValue> iteration_items(const Value& iterable, int line) {
    if (iterable.is_undefined()) return {};
    if (!iterable.is_data()) render_error(line, fmt::format("cannot loop over a {}", type_name(iterable)));
    const JsonValue& json = iterable.json();
    std::vector<JsonValue> items;
    if (json.is_array()) {
      items.assign(json.begin(), json.end());
    } else if (json.is_object()) {
      for (const auto& item : json.items()) items.emplace_back(item.key());
    } else if (json.is_string()) {
      for (const char32_t c : utf8_decode(json.get<std::string>())) items.emplace_back(utf8_encode(std::u32string(1, c)));
    } else {
      render_error(line, fmt::format("cannot loop over a {}", type_name(iterable)));
    }
    return items;
  }

  void bind_targets(Scope& scope, const Node& node, const JsonValue& item) {
    if (node.targets.size() == 1) {
      scope.set(node.targets[0], Value::of(item));
      return;
    }
    if (!item.is_array() || item.size() != node.targets.size()) {
      render_error(node.line, fmt::format("cannot unpack {} into {} loop variables", python_str(item), node.targets.size()));
    }
    for (size_t i = 0; i < node.targets.size(); ++i) scope.set(node.targets[i], Value::of(item[i]));
  }

  void run_for(const Node& node, Scope& scope, std::string& out) {
    std::vector<JsonValue> items = iteration_items(eval(*node.value, scope), node.line);
    if (node.condition != nullptr) {
      std::vector<JsonValue> kept;
      for (JsonValue& item : items) {
        Scope filter_scope(&scope);
        bind_targets(filter_scope, node, item);
        if (truthy(eval(*node.condition, filter_scope))) kept.push_back(std::move(item));
      }
      items = std::move(kept);
    }
    if (items.empty()) {
      run(node.else_body, scope, out);
      return;
    }
    const int64_t length = static_cast<int64_t>(items.size());
    for (int64_t i = 0; i < length; ++i) {
      Scope iteration(&scope);
      JsonValue loop = {{"index", i + 1}, {"index0", i}, {"revindex", length - i}, {"revindex0", length - i - 1},
                        {"first", i == 0}, {"last", i == length - 1}, {"length", length}};
      if (i > 0) loop["previtem"] = items[i - 1];
      if (i + 1 < length) loop["nextitem"] = items[i + 1];
      iteration.set("loop", Value::of(std::move(loop)));
      bind_targets(iteration, node, items[i]);
      if (run(node.body, iteration, out) == Flow::Break) break;
    }
  }

  void run_set(const Node& node, Scope& scope) {
    Value value = eval(*node.value, scope);
    if (node.attribute.empty()) {
      scope.set(node.targets[0], std::move(value));
      return;
    }
    const Value* target = scope.find(node.targets[0]);
    if (target == nullptr || target->kind != Value::Kind::Namespace) {
      render_error(node.line, fmt::format("'{}' is not a namespace: set {}.{} needs one", node.targets[0],
                                          node.targets[0], node.attribute));
    }
    (*target->attributes)[node.attribute] = std::move(value);
  }

  // ---- Expressions ----

  Value eval(const Expr& expr, Scope& scope) {
    switch (expr.kind) {
      case Expr::Kind::Literal: return Value::of(expr.literal);
      case Expr::Kind::Name: {
        const Value* value = scope.find(expr.name);
        return value != nullptr ? *value : Value::undefined(expr.name);
      }
      case Expr::Kind::List: {
        JsonValue list = JsonValue::array();
        for (const auto& item : expr.items) list.push_back(to_json(eval(*item, scope), expr.line));
        return Value::of(std::move(list));
      }
      case Expr::Kind::Dict: {
        JsonValue dict = JsonValue::object();
        for (size_t i = 0; i + 1 < expr.items.size(); i += 2) {
          const JsonValue key = to_json(eval(*expr.items[i], scope), expr.line);
          if (!key.is_string()) render_error(expr.line, "dict keys must be strings");
          dict[key.get<std::string>()] = to_json(eval(*expr.items[i + 1], scope), expr.line);
        }
        return Value::of(std::move(dict));
      }
      case Expr::Kind::Attribute: return attribute(eval(*expr.items[0], scope), expr.name, expr.line);
      case Expr::Kind::Item: return item(eval(*expr.items[0], scope), eval(*expr.items[1], scope), expr.line);
      case Expr::Kind::Slice: return slice(expr, scope);
      case Expr::Kind::Call: return call(expr, scope);
      case Expr::Kind::Filter: return filter(expr.name, eval(*expr.items[0], scope), arguments(expr, scope), expr.line);
      case Expr::Kind::Test: {
        const bool result = test(expr.name, eval(*expr.items[0], scope), arguments(expr, scope), expr.line);
        return Value::of(result != expr.negated);
      }
      case Expr::Kind::Unary: return unary(expr, scope);
      case Expr::Kind::Binary: return binary(expr, scope);
      case Expr::Kind::Conditional:
        if (truthy(eval(*expr.items[1], scope))) return eval(*expr.items[0], scope);
        return expr.items[2] ? eval(*expr.items[2], scope) : Value::undefined("an if without else");
    }
    render_error(expr.line, "unknown expression");
  }

  JsonValue to_json(const Value& value, int line) {
    if (value.is_data()) return value.json();
    if (value.is_undefined()) render_error(line, fmt::format("'{}' is undefined", value.name));
    render_error(line, fmt::format("a {} cannot be used as a value here", type_name(value)));
  }

  // Evaluated arguments of a call, filter or test: items[1..] and kwargs.
  Arguments arguments(const Expr& expr, Scope& scope) {
    Arguments args;
    for (size_t i = 1; i < expr.items.size(); ++i) args.positional.push_back(eval(*expr.items[i], scope));
    for (const auto& [name, value] : expr.kwargs) args.named.emplace_back(name, eval(*value, scope));
    return args;
  }

  Value attribute(const Value& object, const std::string& name, int line) {
    if (object.is_undefined()) render_error(line, fmt::format("'{}' is undefined (reading .{})", object.name, name));
    if (object.kind == Value::Kind::Namespace) {
      auto it = object.attributes->find(name);
      return it != object.attributes->end() ? it->second : Value::undefined(name);
    }
    if (object.is_data() && object.json().is_object()) {
      auto it = object.json().find(name);
      if (it != object.json().end()) return Value::of(*it);
    }
    return Value::undefined(name);
  }

  Value item(const Value& object, const Value& key, int line) {
    if (object.is_undefined()) render_error(line, fmt::format("'{}' is undefined (reading [{}])", object.name, to_text(key)));
    if (key.is_data() && key.json().is_string()) return attribute(object, key.json().get<std::string>(), line);
    if (!object.is_data() || !key.is_data() || !is_integral(key.json())) return Value::undefined("an item");
    const JsonValue& json = object.json();
    int64_t index = as_int(key.json());
    if (json.is_array()) {
      if (index < 0) index += static_cast<int64_t>(json.size());
      if (index < 0 || index >= static_cast<int64_t>(json.size())) return Value::undefined("an item out of range");
      return Value::of(json[static_cast<size_t>(index)]);
    }
    if (json.is_string()) {
      const std::u32string code_points = utf8_decode(json.get<std::string>());
      if (index < 0) index += static_cast<int64_t>(code_points.size());
      if (index < 0 || index >= static_cast<int64_t>(code_points.size())) return Value::undefined("an item out of range");
      return Value::of(utf8_encode(std::u32string(1, code_points[static_cast<size_t>(index)])));
    }
    return Value::undefined("an item");
  }

  Value slice(const Expr& expr, Scope& scope) {
    const Value object = eval(*expr.items[0], scope);
    std::optional<int64_t> bounds[3];
    for (int k = 0; k < 3; ++k) {
      if (!expr.items[k + 1]) continue;
      const Value bound = eval(*expr.items[k + 1], scope);
      if (bound.is_data() && bound.json().is_null()) continue;
      if (!bound.is_data() || !is_integral(bound.json())) render_error(expr.line, "slice bounds must be integers");
      bounds[k] = as_int(bound.json());
    }
    if (!object.is_data() || !(object.json().is_array() || object.json().is_string())) {
      render_error(expr.line, fmt::format("cannot slice a {}", type_name(object)));
    }
    const JsonValue& json = object.json();
    if (json.is_array()) {
      JsonValue out = JsonValue::array();
      for (int64_t i : slice_positions(static_cast<int64_t>(json.size()), bounds[0], bounds[1], bounds[2].value_or(1), expr.line)) {
        out.push_back(json[static_cast<size_t>(i)]);
      }
      return Value::of(std::move(out));
    }
    const std::u32string code_points = utf8_decode(json.get<std::string>());
    std::u32string out;
    for (int64_t i : slice_positions(static_cast<int64_t>(code_points.size()), bounds[0], bounds[1], bounds[2].value_or(1), expr.line)) {
      out += code_points[static_cast<size_t>(i)];
    }
    return Value::of(utf8_encode(out));
  }

  Value unary(const Expr& expr, Scope& scope) {
    const Value operand = eval(*expr.items[0], scope);
    if (expr.name == "not") return Value::of(!truthy(operand));
    if (!operand.is_data() || !is_numeric(operand.json())) {
      render_error(expr.line, fmt::format("bad operand type for unary {}: {}", expr.name, type_name(operand)));
    }
    if (expr.name == "+") return operand;
    const JsonValue& number = operand.json();
    if (number.is_number_float()) return Value::of(-number.get<double>());
    int64_t negated = 0;
    if (__builtin_sub_overflow(int64_t{0}, as_int(number), &negated)) render_error(expr.line, "integer overflow in unary -");
    return Value::of(negated);
  }

  Value binary(const Expr& expr, Scope& scope) {
    const std::string& op = expr.name;
    Value left = eval(*expr.items[0], scope);
    if (op == "and") return truthy(left) ? eval(*expr.items[1], scope) : left;
    if (op == "or") return truthy(left) ? left : eval(*expr.items[1], scope);
    const Value right = eval(*expr.items[1], scope);
    if (op == "~") return Value::of(to_text(left) + to_text(right));
    if (op == "==") return Value::of(values_equal(left, right));
    if (op == "!=") return Value::of(!values_equal(left, right));
    if (op == "in" || op == "not in") return Value::of(contains(right, left, expr.line) == (op == "in"));
    const auto type_error = [&] {
      render_error(expr.line, fmt::format("unsupported operand types for {}: {} and {}", op, type_name(left), type_name(right)));
    };
    if (!left.is_data() || !right.is_data()) type_error();
    const JsonValue& a = left.json();
    const JsonValue& b = right.json();
    if (op == "<" || op == "<=" || op == ">" || op == ">=") {
      int order;
      if (is_numeric(a) && is_numeric(b)) {
        order = as_double(a) < as_double(b) ? -1 : as_double(a) > as_double(b) ? 1 : 0;
      } else if (a.is_string() && b.is_string()) {
        const int compared = a.get_ref<const std::string&>().compare(b.get_ref<const std::string&>());
        order = compared < 0 ? -1 : compared > 0 ? 1 : 0;
      } else {
        type_error();
      }
      return Value::of(op == "<" ? order < 0 : op == "<=" ? order <= 0 : op == ">" ? order > 0 : order >= 0);
    }
    if (op == "+" && a.is_string() && b.is_string()) return Value::of(a.get<std::string>() + b.get<std::string>());
    if (op == "+" && a.is_array() && b.is_array()) {
      JsonValue joined = a;
      joined.insert(joined.end(), b.begin(), b.end());
      return Value::of(std::move(joined));
    }
    if (op == "*" && a.is_string() && is_integral(b)) {
      const std::string& text = a.get_ref<const std::string&>();
      const int64_t times = std::max<int64_t>(as_int(b), 0);
      if (!text.empty() && times > kMaxRepeatedBytes / static_cast<int64_t>(text.size())) {
        render_error(expr.line, fmt::format("string repetition beyond {} bytes", kMaxRepeatedBytes));
      }
      std::string repeated;
      for (int64_t i = 0; i < times; ++i) repeated += text;
      return Value::of(std::move(repeated));
    }
    if (!is_numeric(a) || !is_numeric(b)) type_error();
    return arithmetic(op, a, b, expr.line);
  }

  Value arithmetic(const std::string& op, const JsonValue& a, const JsonValue& b, int line) {
    const bool integers = is_integral(a) && is_integral(b);
    if (op == "/") {
      if (as_double(b) == 0.0) render_error(line, "division by zero");
      return Value::of(as_double(a) / as_double(b));
    }
    if (integers) {
      // Python's integers are unbounded, these are 64-bit: a result that does not fit is an error.
      const int64_t x = as_int(a), y = as_int(b);
      int64_t result = 0;
      const auto checked = [&](bool overflowed) {
        if (overflowed) render_error(line, fmt::format("integer overflow in {} {} {}", x, op, y));
        return Value::of(result);
      };
      if (op == "+") return checked(__builtin_add_overflow(x, y, &result));
      if (op == "-") return checked(__builtin_sub_overflow(x, y, &result));
      if (op == "*") return checked(__builtin_mul_overflow(x, y, &result));
      if ((op == "//" || op == "%") && y == 0) render_error(line, "integer division or modulo by zero");
      if ((op == "//" || op == "%") && y == -1) {  // x // -1 overflows for the smallest x; x % -1 is 0
        return op == "%" ? Value::of(int64_t{0}) : checked(__builtin_sub_overflow(int64_t{0}, x, &result));
      }
      if (op == "//" || op == "%") {
        const int64_t floor_quotient = x / y - ((x % y != 0 && ((x < 0) != (y < 0))) ? 1 : 0);
        return Value::of(op == "//" ? floor_quotient : x - floor_quotient * y);
      }
      if (op == "**" && y >= 0) {
        result = 1;
        int64_t base = x;
        bool overflowed = false;
        for (int64_t exponent = y; exponent > 0 && !overflowed; exponent >>= 1) {  // by squaring
          if (exponent & 1) overflowed = __builtin_mul_overflow(result, base, &result);
          if (exponent > 1 && !overflowed) overflowed = __builtin_mul_overflow(base, base, &base);
        }
        return checked(overflowed);
      }
    }
    const double x = as_double(a), y = as_double(b);
    if (op == "+") return Value::of(x + y);
    if (op == "-") return Value::of(x - y);
    if (op == "*") return Value::of(x * y);
    if (op == "**") return Value::of(std::pow(x, y));
    if (y == 0.0) render_error(line, "float division or modulo by zero");
    if (op == "//") return Value::of(std::floor(x / y));
    return Value::of(x - std::floor(x / y) * y);  // %, with the sign of the divisor as in Python
  }

  bool contains(const Value& container, const Value& needle, int line) {
    if (container.is_undefined()) return false;
    if (container.kind == Value::Kind::Namespace) {
      return needle.is_data() && needle.json().is_string() && container.attributes->count(needle.json().get<std::string>()) > 0;
    }
    if (!container.is_data()) render_error(line, fmt::format("'in' needs a container, got a {}", type_name(container)));
    const JsonValue& json = container.json();
    if (json.is_string()) {
      if (!needle.is_data() || !needle.json().is_string()) {
        render_error(line, fmt::format("'in <string>' needs a string on the left, got a {}", type_name(needle)));
      }
      return json.get_ref<const std::string&>().find(needle.json().get_ref<const std::string&>()) != std::string::npos;
    }
    if (json.is_object()) return needle.is_data() && needle.json().is_string() && json.contains(needle.json().get<std::string>());
    if (json.is_array()) {
      return needle.is_data() && std::any_of(json.begin(), json.end(), [&](const JsonValue& x) { return python_equal(x, needle.json()); });
    }
    render_error(line, fmt::format("'in' needs a container, got a {}", type_name(container)));
  }

  // ---- Calls ----

  Value call(const Expr& expr, Scope& scope) {
    const Expr& callee = *expr.items[0];
    if (callee.kind == Expr::Kind::Attribute) {
      const Value object = eval(*callee.items[0], scope);
      if (object.is_data() && (object.json().is_string() || object.json().is_object())) {
        return method(object.json(), callee.name, arguments(expr, scope), expr.line);
      }
      return call_value(attribute(object, callee.name, expr.line), arguments(expr, scope), expr.line);
    }
    return call_value(eval(callee, scope), arguments(expr, scope), expr.line);
  }

  Value call_value(const Value& function, const Arguments& args, int line) {
    if (function.kind == Value::Kind::Macro) return call_macro(*function.macro, args, line);
    if (function.kind != Value::Kind::Function) {
      render_error(line, fmt::format("'{}' is not callable ({})", function.name, type_name(function)));
    }
    if (function.name == "raise_exception") {
      const Value* message = args.get(0, "message");
      throw TemplateError(fmt::format("the chat template rejected the conversation: {}", message ? to_text(*message) : ""));
    }
    if (function.name == "namespace") {
      Value ns;
      ns.kind = Value::Kind::Namespace;
      ns.attributes = std::make_shared<NamespaceObject>();
      for (const Value& initial : args.positional) {
        if (!initial.is_data() || !initial.json().is_object()) render_error(line, "namespace() takes a dict or keyword arguments");
        for (const auto& entry : initial.json().items()) (*ns.attributes)[entry.key()] = Value::of(entry.value());
      }
      for (const auto& [key, value] : args.named) (*ns.attributes)[key] = value;
      return ns;
    }
    // strftime_now(format): the local time, as transformers' global of that name gives it.
    const Value* format = args.get(0, "format");
    if (format == nullptr || !format->is_data() || !format->json().is_string()) render_error(line, "strftime_now() needs a format string");
    const std::time_t now = std::chrono::system_clock::to_time_t(std::chrono::system_clock::now());
    std::tm local{};
    localtime_r(&now, &local);
    char buffer[256];
    const size_t length = std::strftime(buffer, sizeof(buffer), format->json().get_ref<const std::string&>().c_str(), &local);
    return Value::of(std::string(buffer, length));
  }

  Value call_macro(const Node& macro, const Arguments& args, int line) {
    if (depth_ >= kMaxMacroDepth) render_error(line, fmt::format("macro '{}' recurses deeper than {}", macro.name, kMaxMacroDepth));
    if (args.positional.size() > macro.targets.size()) {
      render_error(line, fmt::format("macro '{}' takes {} arguments, got {}", macro.name, macro.targets.size(), args.positional.size()));
    }
    Scope scope(&globals_);
    for (const auto& [name, value] : args.named) {
      if (std::find(macro.targets.begin(), macro.targets.end(), name) == macro.targets.end()) {
        render_error(line, fmt::format("macro '{}' has no argument '{}'", macro.name, name));
      }
    }
    for (size_t i = 0; i < macro.targets.size(); ++i) {
      const Value* given = args.get(i, macro.targets[i]);
      if (given != nullptr) {
        scope.set(macro.targets[i], *given);
      } else if (macro.defaults[i]) {
        scope.set(macro.targets[i], eval(*macro.defaults[i], scope));
      } else {
        scope.set(macro.targets[i], Value::undefined(macro.targets[i]));
      }
    }
    std::string out;
    ++depth_;
    run(macro.body, scope, out);
    --depth_;
    return Value::of(std::move(out));
  }

  static std::string string_argument(const Value* value, const char* what, int line) {
    if (value == nullptr || !value->is_data() || !value->json().is_string()) render_error(line, fmt::format("{} must be a string", what));
    return value->json().get<std::string>();
  }

  static int64_t int_argument(const Value* value, int64_t fallback, const char* what, int line) {
    if (value == nullptr || (value->is_data() && value->json().is_null())) return fallback;
    if (!value->is_data() || !is_integral(value->json())) render_error(line, fmt::format("{} must be an integer", what));
    return as_int(value->json());
  }

  // The string and dict methods chat templates call.
  Value method(const JsonValue& object, const std::string& name, const Arguments& args, int line) {
    if (object.is_object()) {
      if (name == "items" || name == "keys" || name == "values") {
        JsonValue out = JsonValue::array();
        for (const auto& entry : object.items()) {
          out.push_back(name == "items" ? JsonValue::array({entry.key(), entry.value()})
                        : name == "keys" ? JsonValue(entry.key()) : entry.value());
        }
        return Value::of(std::move(out));
      }
      if (name == "get") {
        const std::string key = string_argument(args.get(0, "key"), "get()'s key", line);
        auto it = object.find(key);
        if (it != object.end()) return Value::of(*it);
        const Value* fallback = args.get(1, "default");
        return fallback != nullptr ? *fallback : Value::of(nullptr);
      }
      render_error(line, fmt::format("dict has no method '{}'", name));
    }
    const std::string& text = object.get_ref<const std::string&>();
    if (name == "startswith" || name == "endswith") {
      const Value* affix = args.get(0, "prefix");
      if (affix == nullptr || !affix->is_data()) render_error(line, fmt::format("{}() needs a string or a tuple of strings", name));
      const JsonValue options = affix->json().is_array() ? affix->json() : JsonValue::array({affix->json()});
      for (const JsonValue& option : options) {
        if (!option.is_string()) render_error(line, fmt::format("{}() needs a string or a tuple of strings", name));
        const std::string& candidate = option.get_ref<const std::string&>();
        const bool match = candidate.size() <= text.size() &&
                           (name == "startswith" ? text.compare(0, candidate.size(), candidate) == 0
                                                 : text.compare(text.size() - candidate.size(), candidate.size(), candidate) == 0);
        if (match) return Value::of(true);
      }
      return Value::of(false);
    }
    if (name == "strip" || name == "lstrip" || name == "rstrip") {
      return Value::of(python_strip(text, args.get(0, "chars"), name != "rstrip", name != "lstrip"));
    }
    if (name == "split") return Value::of(python_split(text, args.get(0, "sep"), int_argument(args.get(1, "maxsplit"), -1, "maxsplit", line), line));
    if (name == "upper" || name == "lower") return Value::of(map_case(text, name == "upper"));
    if (name == "replace") {
      return Value::of(replace_all(text, string_argument(args.get(0, "old"), "replace()'s old", line),
                                   string_argument(args.get(1, "new"), "replace()'s new", line),
                                   int_argument(args.get(2, "count"), -1, "replace()'s count", line)));
    }
    render_error(line, fmt::format("str has no method '{}' here", name));
  }

  // ---- Filters and tests ----

  Value filter(const std::string& name, const Value& input, const Arguments& args, int line) {
    if (name == "safe") return input;
    if (name == "string") return Value::of(to_text(input));
    if (name == "trim") return Value::of(python_strip(to_text(input), args.get(0, "chars"), true, true));
    if (name == "length" || name == "count") return Value::of(length(input, line));
    if (name == "tojson") {
      JsonDumpOptions options;
      if (const Value* indent = args.get(1, "indent"); indent != nullptr && !(indent->is_data() && indent->json().is_null())) {
        options.indent = static_cast<int>(int_argument(indent, 0, "tojson's indent", line));
      }
      if (const Value* ascii = args.get(0, "ensure_ascii")) options.ensure_ascii = truthy(*ascii);
      if (args.get(2, "separators") != nullptr) render_error(line, "tojson's separators argument is not supported");
      if (const Value* sort = args.get(3, "sort_keys")) options.sort_keys = truthy(*sort);
      return Value::of(python_json_dumps(to_json(input, line), options));
    }
    if (name == "items") {
      if (input.is_undefined()) return Value::of(JsonValue::array());
      if (!input.is_data() || !input.json().is_object()) render_error(line, fmt::format("items needs a mapping, got a {}", type_name(input)));
      return method(input.json(), "items", {}, line);
    }
    if (name == "default" || name == "d") {
      const Value* fallback = args.get(0, "default_value");
      const bool use_fallback = input.is_undefined() || (args.get(1, "boolean") != nullptr && truthy(*args.get(1, "boolean")) && !truthy(input));
      return use_fallback ? (fallback != nullptr ? *fallback : Value::of("")) : input;
    }
    if (name == "join") {
      const std::string separator = args.get(0, "d") ? string_argument(args.get(0, "d"), "join's separator", line) : "";
      std::string out;
      bool first = true;
      for (const JsonValue& element : iteration_items(input, line)) {
        if (!first) out += separator;
        first = false;
        out += python_str(element);
      }
      return Value::of(std::move(out));
    }
    if (name == "first" || name == "last") {
      const std::vector<JsonValue> elements = iteration_items(input, line);
      if (elements.empty()) return Value::undefined(name + " of an empty sequence");
      return Value::of(name == "first" ? elements.front() : elements.back());
    }
    if (name == "list") return Value::of(JsonValue(iteration_items(input, line)));
    if (name == "upper" || name == "lower") return Value::of(map_case(to_text(input), name == "upper"));
    if (name == "replace") {
      return Value::of(replace_all(to_text(input), string_argument(args.get(0, "old"), "replace's old", line),
                                   string_argument(args.get(1, "new"), "replace's new", line),
                                   int_argument(args.get(2, "count"), -1, "replace's count", line)));
    }
    render_error(line, fmt::format("unsupported filter '{}'", name));
  }

  int64_t length(const Value& input, int line) {
    if (input.is_undefined()) return 0;
    if (input.is_data()) {
      const JsonValue& json = input.json();
      if (json.is_string()) return static_cast<int64_t>(code_point_count(json.get<std::string>()));
      if (json.is_array() || json.is_object()) return static_cast<int64_t>(json.size());
    }
    render_error(line, fmt::format("a {} has no length", type_name(input)));
  }

  bool test(const std::string& name, const Value& input, const Arguments& args, int line) {
    const bool data = input.is_data();
    const JsonValue* json = data ? &input.json() : nullptr;
    if (name == "defined") return !input.is_undefined();
    if (name == "undefined") return input.is_undefined();
    if (name == "none") return data && json->is_null();
    if (name == "string") return data && json->is_string();
    if (name == "mapping") return data && json->is_object();
    if (name == "number") return data && is_numeric(*json);
    if (name == "integer") return data && json->is_number_integer();
    if (name == "float") return data && json->is_number_float();
    if (name == "boolean") return data && json->is_boolean();
    if (name == "true") return data && json->is_boolean() && json->get<bool>();
    if (name == "false") return data && json->is_boolean() && !json->get<bool>();
    // As jinja2: strings and dicts are sequences; an undefined value is iterable (as an empty one).
    if (name == "sequence") return data && (json->is_string() || json->is_array() || json->is_object());
    if (name == "iterable") return input.is_undefined() || (data && (json->is_string() || json->is_array() || json->is_object()));
    if (name == "callable") return input.kind == Value::Kind::Macro || input.kind == Value::Kind::Function;
    if (name == "eq" || name == "equalto") {
      const Value* other = args.get(0, "other");
      if (other == nullptr) render_error(line, fmt::format("test '{}' needs an argument", name));
      return values_equal(input, *other);
    }
    render_error(line, fmt::format("unsupported test '{}'", name));
  }

  Scope globals_;
  int depth_ = 0;
};

}  // namespace
}  // namespace jinja

JinjaTemplate::JinjaTemplate(std::string source) : root_(std::make_unique<jinja::Node>(jinja::parse(source))) {}
JinjaTemplate::~JinjaTemplate() = default;
JinjaTemplate::JinjaTemplate(JinjaTemplate&&) noexcept = default;
JinjaTemplate& JinjaTemplate::operator=(JinjaTemplate&&) noexcept = default;

std::string JinjaTemplate::render(const JsonValue& context) const {
  if (!context.is_object()) throw TemplateError("chat template: the context must be a JSON object");
  return jinja::Renderer(context).render(*root_);
}

}  // namespace uberlm
