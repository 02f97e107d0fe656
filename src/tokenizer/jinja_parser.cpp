// Jinja source -> jinja::Node: the lexer splits text from tags applying jinja2's whitespace rules as
// transformers configures them (trim_blocks, lstrip_blocks, no trailing newline kept), then a recursive
// descent parser follows jinja2's grammar and operator precedence (jinja2/parser.py).
#include <algorithm>
#include <cctype>
#include <charconv>
#include <cstdlib>
#include <optional>
#include <string_view>

#include "tokenizer/jinja_ast.h"
#include "tokenizer/jinja_template.h"

namespace uberlm::jinja {

namespace {

[[noreturn]] void syntax_error(int line, const std::string& message) {
  throw TemplateError(fmt::format("chat template line {}: {}", line, message));
}

// Real templates nest a handful of levels; the limit keeps parsing and rendering (both recursive) far
// from the end of the stack.
constexpr int kMaxNesting = 64;

// Counts one level of nesting for as long as it lives.
class NestingGuard {
 public:
  NestingGuard(int& depth, int line) : depth_(depth) {
    if (++depth_ > kMaxNesting) syntax_error(line, fmt::format("nested deeper than {} levels", kMaxNesting));
  }
  ~NestingGuard() { --depth_; }
  NestingGuard(const NestingGuard&) = delete;
  NestingGuard& operator=(const NestingGuard&) = delete;

 private:
  int& depth_;
};

// ---- Lexer: text and tags ------------------------------------------------------------------------

struct Segment {
  enum class Kind { Text, Output, Statement };
  Kind kind;
  std::string content;
  int line;
};

bool is_whitespace(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }

// jinja2 reads the source with its line endings made "\n" and a final newline dropped.
std::string normalize_newlines(const std::string& source) {
  std::string out;
  out.reserve(source.size());
  for (size_t i = 0; i < source.size(); ++i) {
    if (source[i] == '\r') {
      out += '\n';
      if (i + 1 < source.size() && source[i + 1] == '\n') ++i;
    } else {
      out += source[i];
    }
  }
  if (!out.empty() && out.back() == '\n') out.pop_back();
  return out;
}

// Where the tag whose content starts at `from` closes ("}}" or "%}"), skipping string literals.
size_t find_tag_end(const std::string& source, size_t from, char closer, int line) {
  for (size_t i = from; i + 1 < source.size(); ++i) {
    const char c = source[i];
    if (c == '\'' || c == '"') {
      for (++i; i < source.size() && source[i] != c; ++i) {
        if (source[i] == '\\') ++i;
      }
      continue;
    }
    if (c == closer && source[i + 1] == '}') return i;
  }
  syntax_error(line, fmt::format("a tag opened here is not closed with '{}}}'", closer));
}

std::vector<Segment> split_tags(const std::string& raw_source) {
  const std::string source = normalize_newlines(raw_source);
  std::vector<Segment> segments;
  size_t pos = 0;
  int line = 1;
  bool line_starting = true;  // the previous tag's end took a newline (jinja2's lstrip_blocks rule)
  auto count_lines = [&](size_t from, size_t to) {
    line += static_cast<int>(std::count(source.begin() + from, source.begin() + to, '\n'));
  };
  while (pos <= source.size()) {
    size_t start = pos;
    while ((start = source.find('{', start)) != std::string::npos) {
      if (start + 1 < source.size() && (source[start + 1] == '{' || source[start + 1] == '%' || source[start + 1] == '#')) break;
      ++start;
    }
    std::string text = source.substr(pos, start == std::string::npos ? std::string::npos : start - pos);
    const int text_line = line;
    if (start == std::string::npos) {
      if (!text.empty()) segments.push_back({Segment::Kind::Text, text, text_line});
      break;
    }
    count_lines(pos, start);
    const char kind = source[start + 1];
    const char modifier = start + 2 < source.size() ? source[start + 2] : '\0';
    if (modifier == '-') {
      while (!text.empty() && is_whitespace(text.back())) text.pop_back();
    } else if (kind != '{' && modifier != '+') {
      // lstrip_blocks: blanks between the line start and a block or comment tag go.
      const size_t newline = text.rfind('\n');
      const size_t from = newline == std::string::npos ? 0 : newline + 1;
      const bool blank = std::all_of(text.begin() + from, text.end(), [](char c) { return c == ' ' || c == '\t'; });
      if ((newline != std::string::npos || line_starting) && blank) text.erase(from);
    }
    if (!text.empty()) segments.push_back({Segment::Kind::Text, text, text_line});

    const size_t content_begin = start + 2 + (modifier == '-' || modifier == '+' ? 1 : 0);
    size_t end;
    if (kind == '#') {
      end = source.find("#}", content_begin);
      if (end == std::string::npos) syntax_error(line, "a comment opened here is not closed with '#}'");
    } else {
      end = find_tag_end(source, content_begin, kind == '{' ? '}' : '%', line);
    }
    const bool strip_right = end > content_begin && source[end - 1] == '-';
    const std::string content = source.substr(content_begin, end - content_begin - (strip_right ? 1 : 0));
    if (kind != '#') {
      segments.push_back({kind == '{' ? Segment::Kind::Output : Segment::Kind::Statement, content, line});
    }
    count_lines(start, end + 2);
    pos = end + 2;
    line_starting = false;
    if (strip_right) {
      const size_t after = pos;
      while (pos < source.size() && is_whitespace(source[pos])) ++pos;
      line_starting = pos > after && source[pos - 1] == '\n';
      count_lines(after, pos);
    } else if (kind != '{' && pos < source.size() && source[pos] == '\n') {  // trim_blocks
      ++pos;
      ++line;
      line_starting = true;
    }
  }
  return segments;
}

// ---- Lexer: the expression inside a tag ------------------------------------------------------------

struct Token {
  enum class Kind { Name, String, Number, Operator, End };
  Kind kind;
  std::string text;  // a name, an operator, or a string literal's value
  JsonValue number;
};

void append_code_point(std::string& out, char32_t c) { out += utf8_encode(std::u32string_view(&c, 1)); }

// A string literal's value: jinja2 decodes it with Python's unicode-escape rules.
std::string unescape(std::string_view body, int line) {
  std::string out;
  for (size_t i = 0; i < body.size(); ++i) {
    if (body[i] != '\\' || i + 1 == body.size()) {
      out += body[i];
      continue;
    }
    const char c = body[++i];
    auto hex = [&](size_t digits) {
      const std::string code(body.substr(i + 1, digits));
      if (code.size() != digits || !std::all_of(code.begin(), code.end(), [](char h) { return std::isxdigit(static_cast<unsigned char>(h)); })) {
        syntax_error(line, "bad \\x, \\u or \\U escape in a string");
      }
      i += digits;
      const unsigned long code_point = std::stoul(code, nullptr, 16);
      if (code_point > 0x10FFFF) syntax_error(line, fmt::format("\\U{} is not a Unicode character", code));
      append_code_point(out, static_cast<char32_t>(code_point));
    };
    switch (c) {
      case 'n': out += '\n'; break;
      case 't': out += '\t'; break;
      case 'r': out += '\r'; break;
      case 'b': out += '\b'; break;
      case 'f': out += '\f'; break;
      case 'v': out += '\v'; break;
      case 'a': out += '\a'; break;
      case '\\': out += '\\'; break;
      case '\'': out += '\''; break;
      case '"': out += '"'; break;
      case '\n': break;
      case 'x': hex(2); break;
      case 'u': hex(4); break;
      case 'U': hex(8); break;
      default:
        if (c >= '0' && c <= '7') {
          int value = c - '0';
          for (int k = 0; k < 2 && i + 1 < body.size() && body[i + 1] >= '0' && body[i + 1] <= '7'; ++k) {
            value = value * 8 + (body[++i] - '0');
          }
          append_code_point(out, static_cast<char32_t>(value));
        } else {
          out += '\\';
          out += c;
        }
    }
  }
  return out;
}

std::vector<Token> tokenize(const std::string& text, int line) {
  static constexpr std::string_view kTwoCharOperators[] = {"//", "**", "==", "!=", "<=", ">="};
  static constexpr std::string_view kOneCharOperators = "+-*/%~|.,:()[]{}<>=";
  std::vector<Token> tokens;
  size_t i = 0;
  while (i < text.size()) {
    const char c = text[i];
    if (is_whitespace(c)) {
      ++i;
    } else if (std::isalpha(static_cast<unsigned char>(c)) || c == '_') {
      size_t end = i;
      while (end < text.size() && (std::isalnum(static_cast<unsigned char>(text[end])) || text[end] == '_')) ++end;
      tokens.push_back({Token::Kind::Name, text.substr(i, end - i), {}});
      i = end;
    } else if (std::isdigit(static_cast<unsigned char>(c))) {
      size_t end = i;
      bool is_float = false;
      while (end < text.size()) {
        const char d = text[end];
        if (std::isdigit(static_cast<unsigned char>(d)) || d == '_') {
          ++end;
        } else if (d == '.' && !is_float && end + 1 < text.size() && std::isdigit(static_cast<unsigned char>(text[end + 1]))) {
          is_float = true;
          ++end;
        } else if ((d == 'e' || d == 'E') && end + 1 < text.size() &&
                   (std::isdigit(static_cast<unsigned char>(text[end + 1])) || text[end + 1] == '-' || text[end + 1] == '+')) {
          is_float = true;
          end += 2;
        } else {
          break;
        }
      }
      std::string digits = text.substr(i, end - i);
      digits.erase(std::remove(digits.begin(), digits.end(), '_'), digits.end());
      Token token{Token::Kind::Number, digits, {}};
      if (is_float) {
        token.number = std::strtod(digits.c_str(), nullptr);  // as Python: too large is inf
      } else {
        int64_t value = 0;
        if (std::from_chars(digits.data(), digits.data() + digits.size(), value).ec != std::errc()) {
          syntax_error(line, fmt::format("integer literal {} does not fit in 64 bits", digits));
        }
        token.number = value;
      }
      tokens.push_back(std::move(token));
      i = end;
    } else if (c == '\'' || c == '"') {
      size_t end = i + 1;
      while (end < text.size() && text[end] != c) end += text[end] == '\\' ? 2 : 1;
      if (end >= text.size()) syntax_error(line, "a string literal is not closed");
      tokens.push_back({Token::Kind::String, unescape(std::string_view(text).substr(i + 1, end - i - 1), line), {}});
      i = end + 1;
    } else {
      const std::string_view rest = std::string_view(text).substr(i);
      const auto two = std::find_if(std::begin(kTwoCharOperators), std::end(kTwoCharOperators),
                                    [&](std::string_view op) { return rest.substr(0, 2) == op; });
      if (two != std::end(kTwoCharOperators)) {
        tokens.push_back({Token::Kind::Operator, std::string(*two), {}});
        i += 2;
      } else if (kOneCharOperators.find(c) != std::string_view::npos) {
        tokens.push_back({Token::Kind::Operator, std::string(1, c), {}});
        ++i;
      } else {
        syntax_error(line, fmt::format("unexpected character '{}'", c));
      }
    }
  }
  tokens.push_back({Token::Kind::End, "", {}});
  return tokens;
}

// ---- Parser: expressions -------------------------------------------------------------------------------

std::unique_ptr<Expr> make(Expr::Kind kind, int line, std::string name = "") {
  auto expr = std::make_unique<Expr>();
  expr->kind = kind;
  expr->line = line;
  expr->name = std::move(name);
  return expr;
}

class ExprParser {
 public:
  ExprParser(const std::string& text, int line) : tokens_(tokenize(text, line)), line_(line) {}

  const Token& peek() const { return tokens_[at_]; }
  bool at_end() const { return peek().kind == Token::Kind::End; }
  bool is_operator(std::string_view op) const { return peek().kind == Token::Kind::Operator && peek().text == op; }
  bool is_name(std::string_view name) const { return peek().kind == Token::Kind::Name && peek().text == name; }
  bool accept_operator(std::string_view op) {
    if (!is_operator(op)) return false;
    ++at_;
    return true;
  }
  bool accept_name(std::string_view name) {
    if (!is_name(name)) return false;
    ++at_;
    return true;
  }
  void expect_operator(std::string_view op) {
    if (!accept_operator(op)) fail_here(fmt::format("expected '{}'", op));
  }
  std::string expect_name() {
    if (peek().kind != Token::Kind::Name) fail_here("expected a name");
    return tokens_[at_++].text;
  }
  void expect_end() {
    if (!at_end()) fail_here("unexpected text");
  }
  [[noreturn]] void fail_here(const std::string& message) const {
    syntax_error(line_, at_end() ? message + " at the end of the tag" : fmt::format("{} at '{}'", message, peek().text));
  }

  // x if c else y
  std::unique_ptr<Expr> expression() {
    const NestingGuard guard(depth_, line_);
    auto value = logical_or();
    if (!accept_name("if")) return value;
    auto conditional = make(Expr::Kind::Conditional, line_);
    conditional->items.push_back(std::move(value));
    conditional->items.push_back(logical_or());
    conditional->items.push_back(accept_name("else") ? expression() : nullptr);
    return conditional;
  }

  std::unique_ptr<Expr> logical_or() {
    auto left = logical_and();
    while (accept_name("or")) left = binary("or", std::move(left), logical_and());
    return left;
  }

 private:
  std::unique_ptr<Expr> binary(std::string op, std::unique_ptr<Expr> left, std::unique_ptr<Expr> right) {
    auto node = make(Expr::Kind::Binary, line_, std::move(op));
    node->items.push_back(std::move(left));
    node->items.push_back(std::move(right));
    return node;
  }

  std::unique_ptr<Expr> logical_and() {
    auto left = logical_not();
    while (accept_name("and")) left = binary("and", std::move(left), logical_not());
    return left;
  }

  std::unique_ptr<Expr> logical_not() {
    if (!accept_name("not")) return comparison();
    const NestingGuard guard(depth_, line_);
    auto node = make(Expr::Kind::Unary, line_, "not");
    node->items.push_back(logical_not());
    return node;
  }

  std::optional<std::string> comparison_operator() {
    if (peek().kind == Token::Kind::Operator &&
        (peek().text == "==" || peek().text == "!=" || peek().text == "<" || peek().text == "<=" ||
         peek().text == ">" || peek().text == ">=")) {
      return tokens_[at_++].text;
    }
    if (accept_name("in")) return "in";
    if (is_name("not") && tokens_[at_ + 1].kind == Token::Kind::Name && tokens_[at_ + 1].text == "in") {
      at_ += 2;
      return "not in";
    }
    return std::nullopt;
  }

  std::unique_ptr<Expr> comparison() {
    auto left = sum();
    const std::optional<std::string> op = comparison_operator();
    if (!op) return left;
    auto node = binary(*op, std::move(left), sum());
    if (comparison_operator()) syntax_error(line_, "chained comparisons (a < b < c) are not supported");
    return node;
  }

  std::unique_ptr<Expr> sum() {
    auto left = concat();
    while (is_operator("+") || is_operator("-")) {
      const std::string op = tokens_[at_++].text;
      left = binary(op, std::move(left), concat());
    }
    return left;
  }

  std::unique_ptr<Expr> concat() {
    auto left = product();
    while (accept_operator("~")) left = binary("~", std::move(left), product());
    return left;
  }

  std::unique_ptr<Expr> product() {
    auto left = power();
    while (is_operator("*") || is_operator("/") || is_operator("//") || is_operator("%")) {
      const std::string op = tokens_[at_++].text;
      left = binary(op, std::move(left), power());
    }
    return left;
  }

  std::unique_ptr<Expr> power() {
    auto left = unary(true);
    while (accept_operator("**")) left = binary("**", std::move(left), unary(true));
    return left;
  }

  std::unique_ptr<Expr> unary(bool with_filters) {
    const NestingGuard guard(depth_, line_);
    std::unique_ptr<Expr> node;
    if (is_operator("-") || is_operator("+")) {
      node = make(Expr::Kind::Unary, line_, tokens_[at_++].text);
      node->items.push_back(unary(false));
    } else {
      node = primary();
    }
    node = postfix(std::move(node));
    return with_filters ? filters_and_tests(std::move(node)) : std::move(node);
  }

  std::unique_ptr<Expr> primary() {
    const Token& token = peek();
    if (token.kind == Token::Kind::String) {
      auto node = make(Expr::Kind::Literal, line_);
      std::string text;
      while (peek().kind == Token::Kind::String) text += tokens_[at_++].text;  // adjacent literals join
      node->literal = text;
      return node;
    }
    if (token.kind == Token::Kind::Number) {
      auto node = make(Expr::Kind::Literal, line_);
      node->literal = tokens_[at_++].number;
      return node;
    }
    if (token.kind == Token::Kind::Name) {
      const std::string name = tokens_[at_++].text;
      auto node = make(Expr::Kind::Literal, line_);
      if (name == "true" || name == "True") {
        node->literal = true;
      } else if (name == "false" || name == "False") {
        node->literal = false;
      } else if (name == "none" || name == "None") {
        node->literal = nullptr;
      } else {
        node = make(Expr::Kind::Name, line_, name);
      }
      return node;
    }
    if (accept_operator("(")) {
      auto first = expression();
      if (accept_operator(")")) return first;
      auto tuple = make(Expr::Kind::List, line_);  // a tuple reads as a list
      tuple->items.push_back(std::move(first));
      while (accept_operator(",") && !is_operator(")")) tuple->items.push_back(expression());
      expect_operator(")");
      return tuple;
    }
    if (accept_operator("[")) {
      auto list = make(Expr::Kind::List, line_);
      while (!is_operator("]")) {
        list->items.push_back(expression());
        if (!accept_operator(",")) break;
      }
      expect_operator("]");
      return list;
    }
    if (accept_operator("{")) {
      auto dict = make(Expr::Kind::Dict, line_);
      while (!is_operator("}")) {
        dict->items.push_back(expression());
        expect_operator(":");
        dict->items.push_back(expression());
        if (!accept_operator(",")) break;
      }
      expect_operator("}");
      return dict;
    }
    fail_here("expected a value");
  }

  std::unique_ptr<Expr> postfix(std::unique_ptr<Expr> node) {
    while (true) {
      if (accept_operator(".")) {
        auto attribute = make(Expr::Kind::Attribute, line_);
        if (peek().kind == Token::Kind::Number && peek().number.is_number_integer()) {
          attribute->kind = Expr::Kind::Item;  // x.0 is x[0]
          attribute->items.push_back(std::move(node));
          attribute->items.push_back(make(Expr::Kind::Literal, line_));
          attribute->items.back()->literal = tokens_[at_++].number;
        } else {
          attribute->name = expect_name();
          attribute->items.push_back(std::move(node));
        }
        node = std::move(attribute);
      } else if (accept_operator("[")) {
        node = subscript(std::move(node));
      } else if (is_operator("(")) {
        auto call = make(Expr::Kind::Call, line_);
        call->items.push_back(std::move(node));
        call_arguments(*call);
        node = std::move(call);
      } else {
        return node;
      }
    }
  }

  std::unique_ptr<Expr> subscript(std::unique_ptr<Expr> object) {
    std::unique_ptr<Expr> bounds[3];
    int colons = 0;
    if (!is_operator(":")) bounds[0] = expression();
    while (colons < 2 && accept_operator(":")) {
      ++colons;
      if (!is_operator(":") && !is_operator("]")) bounds[colons] = expression();
    }
    expect_operator("]");
    auto node = make(colons == 0 ? Expr::Kind::Item : Expr::Kind::Slice, line_);
    node->items.push_back(std::move(object));
    node->items.push_back(std::move(bounds[0]));
    if (colons > 0) {
      node->items.push_back(std::move(bounds[1]));
      node->items.push_back(std::move(bounds[2]));
    }
    return node;
  }

  // (a, b, name=c) into node.items (after what is there) and node.kwargs.
  void call_arguments(Expr& node) {
    expect_operator("(");
    while (!is_operator(")")) {
      if (peek().kind == Token::Kind::Name && tokens_[at_ + 1].kind == Token::Kind::Operator && tokens_[at_ + 1].text == "=") {
        std::string name = tokens_[at_].text;
        at_ += 2;
        node.kwargs.emplace_back(std::move(name), expression());
      } else {
        if (!node.kwargs.empty()) fail_here("a positional argument follows a keyword argument");
        node.items.push_back(expression());
      }
      if (!accept_operator(",")) break;
    }
    expect_operator(")");
  }

  std::unique_ptr<Expr> filters_and_tests(std::unique_ptr<Expr> node) {
    while (true) {
      if (accept_operator("|")) {
        auto filter = make(Expr::Kind::Filter, line_, expect_name());
        filter->items.push_back(std::move(node));
        if (is_operator("(")) call_arguments(*filter);
        node = std::move(filter);
      } else if (accept_name("is")) {
        auto test = make(Expr::Kind::Test, line_);
        test->negated = accept_name("not");
        test->name = expect_name();
        test->items.push_back(std::move(node));
        if (is_operator("(")) {
          call_arguments(*test);
        } else if (starts_bare_test_argument()) {
          test->items.push_back(postfix(primary()));
        }
        node = std::move(test);
      } else {
        return node;
      }
    }
  }

  // jinja2 lets a test take one argument without parentheses: `x is divisibleby 3`.
  bool starts_bare_test_argument() const {
    const Token& token = peek();
    if (token.kind == Token::Kind::String || token.kind == Token::Kind::Number) return true;
    if (token.kind == Token::Kind::Operator) return token.text == "[" || token.text == "{";
    if (token.kind != Token::Kind::Name) return false;
    return token.text != "else" && token.text != "or" && token.text != "and" && token.text != "if" &&
           token.text != "is" && token.text != "in" && token.text != "not";
  }

  std::vector<Token> tokens_;
  size_t at_ = 0;
  int line_;
  int depth_ = 0;
};

// ---- Parser: statements -----------------------------------------------------------------------------

Node make_node(Node::Kind kind, int line) {
  Node node;
  node.kind = kind;
  node.line = line;
  return node;
}

class TemplateParser {
 public:
  explicit TemplateParser(const std::string& source) : segments_(split_tags(source)) {}

  Node parse_template() {
    Node root = make_node(Node::Kind::Sequence, 1);
    const std::string stop = parse_body(root.body, {});
    if (!stop.empty()) syntax_error(last_line_, fmt::format("unexpected '{}'", stop));
    return root;
  }

 private:
  // Appends nodes until a statement named in `stops` (returned, its parser left in parser_) or the end ("").
  // opened_line: where the block being read began, for the error when its end tag is missing.
  std::string parse_body(std::vector<Node>& out, std::initializer_list<std::string_view> stops, int opened_line = 0) {
    while (at_ < segments_.size()) {
      const Segment& segment = segments_[at_++];
      last_line_ = segment.line;
      if (segment.kind == Segment::Kind::Text) {
        Node text = make_node(Node::Kind::Text, segment.line);
        text.text = segment.content;
        out.push_back(std::move(text));
        continue;
      }
      parser_ = std::make_unique<ExprParser>(segment.content, segment.line);
      if (segment.kind == Segment::Kind::Output) {
        Node output = make_node(Node::Kind::Output, segment.line);
        output.value = parser_->expression();
        parser_->expect_end();
        out.push_back(std::move(output));
        continue;
      }
      const std::string tag = parser_->expect_name();
      if (std::find(stops.begin(), stops.end(), tag) != stops.end()) return tag;
      out.push_back(statement(tag, segment.line));
    }
    if (stops.size() > 0) {
      syntax_error(opened_line, fmt::format("the block opened here is not closed: '{}' is missing", *(stops.end() - 1)));
    }
    return "";
  }

  Node statement(const std::string& tag, int line) {
    const NestingGuard guard(depth_, line);
    if (tag == "if") return if_statement(line);
    if (tag == "for") return for_statement(line);
    if (tag == "set") return set_statement(line);
    if (tag == "macro") return macro_statement(line);
    if (tag == "break" || tag == "continue") {
      parser_->expect_end();
      return make_node(tag == "break" ? Node::Kind::Break : Node::Kind::Continue, line);
    }
    if (tag == "generation") {  // transformers' marker of assistant text: renders its body
      parser_->expect_end();
      Node body = make_node(Node::Kind::Sequence, line);
      parse_body(body.body, {"endgeneration"}, line);
      parser_->expect_end();
      return body;
    }
    syntax_error(line, fmt::format("unsupported or unexpected tag '{}'", tag));
  }

  Node if_statement(int line) {
    Node node = make_node(Node::Kind::If, line);
    Node branch = make_node(Node::Kind::Sequence, line);
    branch.condition = parser_->expression();
    parser_->expect_end();
    while (true) {
      const std::string stop = parse_body(branch.body, {"elif", "else", "endif"}, line);
      node.body.push_back(std::move(branch));
      branch = make_node(Node::Kind::Sequence, last_line_);
      if (stop == "endif") break;
      if (stop == "elif") {
        branch.condition = parser_->expression();
      } else {
        parser_->expect_end();
        node.body.push_back(std::move(branch));
        branch = make_node(Node::Kind::Sequence, last_line_);
        parse_body(node.body.back().body, {"endif"}, line);
        break;
      }
      parser_->expect_end();
    }
    parser_->expect_end();
    return node;
  }

  Node for_statement(int line) {
    Node node = make_node(Node::Kind::For, line);
    do {
      node.targets.push_back(parser_->expect_name());
    } while (parser_->accept_operator(","));
    if (!parser_->accept_name("in")) parser_->fail_here("expected 'in'");
    node.value = parser_->logical_or();
    if (parser_->accept_name("if")) node.condition = parser_->logical_or();
    if (parser_->accept_name("recursive")) syntax_error(line, "recursive for loops are not supported");
    parser_->expect_end();
    if (parse_body(node.body, {"else", "endfor"}, line) == "else") {
      parser_->expect_end();
      parse_body(node.else_body, {"endfor"}, line);
    }
    parser_->expect_end();
    return node;
  }

  Node set_statement(int line) {
    Node node = make_node(Node::Kind::Set, line);
    node.targets.push_back(parser_->expect_name());
    if (parser_->accept_operator(".")) node.attribute = parser_->expect_name();
    if (parser_->is_operator(",")) syntax_error(line, "set with several targets is not supported");
    if (!parser_->accept_operator("=")) syntax_error(line, "block set ({% set x %}...{% endset %}) is not supported");
    node.value = parser_->expression();
    parser_->expect_end();
    return node;
  }

  Node macro_statement(int line) {
    Node node = make_node(Node::Kind::Macro, line);
    node.name = parser_->expect_name();
    parser_->expect_operator("(");
    while (!parser_->is_operator(")")) {
      node.targets.push_back(parser_->expect_name());
      node.defaults.push_back(parser_->accept_operator("=") ? parser_->expression() : nullptr);
      if (!parser_->accept_operator(",")) break;
    }
    parser_->expect_operator(")");
    parser_->expect_end();
    parse_body(node.body, {"endmacro"}, line);
    parser_->expect_end();
    return node;
  }

  std::vector<Segment> segments_;
  size_t at_ = 0;
  int last_line_ = 1;
  std::unique_ptr<ExprParser> parser_;
  int depth_ = 0;
};

}  // namespace

Node parse(const std::string& source) { return TemplateParser(source).parse_template(); }

}  // namespace uberlm::jinja
