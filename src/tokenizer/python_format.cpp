#include "tokenizer/python_format.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdlib>
#include <vector>

#include <fmt/format.h>

namespace uberlm {

namespace {

void append_utf8(std::string& out, char32_t c) {
  if (c < 0x80) {
    out += static_cast<char>(c);
  } else if (c < 0x800) {
    out += static_cast<char>(0xC0 | (c >> 6));
    out += static_cast<char>(0x80 | (c & 0x3F));
  } else if (c < 0x10000) {
    out += static_cast<char>(0xE0 | (c >> 12));
    out += static_cast<char>(0x80 | ((c >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (c & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (c >> 18));
    out += static_cast<char>(0x80 | ((c >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((c >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (c & 0x3F));
  }
}

// Python's repr() of a code point outside ASCII keeps printable characters; these few it escapes.
bool python_printable(char32_t c) {
  if (c < 0x20 || c == 0x7F) return false;
  if (c >= 0x80 && c < 0xA0) return false;
  if (c == 0xAD || c == 0x2028 || c == 0x2029 || (c >= 0xD800 && c < 0xE000)) return false;
  return true;
}

void append_repr_escape(std::string& out, char32_t c) {
  if (c < 0x100) {
    out += fmt::format("\\x{:02x}", static_cast<unsigned>(c));
  } else if (c < 0x10000) {
    out += fmt::format("\\u{:04x}", static_cast<unsigned>(c));
  } else {
    out += fmt::format("\\U{:08x}", static_cast<unsigned>(c));
  }
}

void append_json_string(std::string& out, const std::string& text, bool ensure_ascii) {
  out += '"';
  for (const char32_t c : utf8_decode(text)) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      default:
        if (c < 0x20 || (ensure_ascii && c >= 0x7F)) {
          if (c >= 0x10000) {  // a surrogate pair, as json.dumps writes it
            const char32_t v = c - 0x10000;
            out += fmt::format("\\u{:04x}\\u{:04x}", 0xD800 + (v >> 10), 0xDC00 + (v & 0x3FF));
          } else {
            out += fmt::format("\\u{:04x}", static_cast<unsigned>(c));
          }
        } else {
          append_utf8(out, c);
        }
    }
  }
  out += '"';
}

void append_json(std::string& out, const JsonValue& value, const JsonDumpOptions& options, int depth) {
  const auto newline = [&](int level) {
    if (!options.indent) return;
    out += '\n';
    out.append(static_cast<size_t>(*options.indent * level), ' ');
  };
  const char* item_separator = options.indent ? "," : ", ";
  if (value.is_object()) {
    if (value.empty()) {
      out += "{}";
      return;
    }
    std::vector<const std::string*> keys;
    for (const auto& item : value.items()) keys.push_back(&item.key());
    if (options.sort_keys) std::sort(keys.begin(), keys.end(), [](auto* a, auto* b) { return *a < *b; });
    out += '{';
    for (size_t i = 0; i < keys.size(); ++i) {
      if (i > 0) out += item_separator;
      newline(depth + 1);
      append_json_string(out, *keys[i], options.ensure_ascii);
      out += ": ";
      append_json(out, value.at(*keys[i]), options, depth + 1);
    }
    newline(depth);
    out += '}';
  } else if (value.is_array()) {
    if (value.empty()) {
      out += "[]";
      return;
    }
    out += '[';
    for (size_t i = 0; i < value.size(); ++i) {
      if (i > 0) out += item_separator;
      newline(depth + 1);
      append_json(out, value[i], options, depth + 1);
    }
    newline(depth);
    out += ']';
  } else if (value.is_string()) {
    append_json_string(out, value.get_ref<const std::string&>(), options.ensure_ascii);
  } else if (value.is_number_float()) {
    const double number = value.get<double>();
    out += std::isnan(number) ? "NaN" : std::isinf(number) ? (number > 0 ? "Infinity" : "-Infinity")
                                                            : python_float(number);
  } else if (value.is_null()) {
    out += "null";
  } else {
    out += value.dump();  // booleans and integers print alike in both languages
  }
}

void append_repr(std::string& out, const JsonValue& value) {
  if (value.is_string()) {
    out += python_repr(value.get_ref<const std::string&>());
  } else {
    out += python_str(value);
  }
}

}  // namespace

std::u32string utf8_decode(std::string_view text) {
  std::u32string out;
  out.reserve(text.size());
  size_t i = 0;
  while (i < text.size()) {
    const auto byte = static_cast<unsigned char>(text[i]);
    const int length = byte < 0x80 ? 1 : (byte >> 5) == 0x6 ? 2 : (byte >> 4) == 0xE ? 3 : (byte >> 3) == 0x1E ? 4 : 0;
    char32_t c = length == 1 ? byte : length == 2 ? (byte & 0x1F) : length == 3 ? (byte & 0x0F) : (byte & 0x07);
    bool valid = length > 0 && i + length <= text.size();
    for (int k = 1; valid && k < length; ++k) {
      const auto next = static_cast<unsigned char>(text[i + k]);
      valid = (next & 0xC0) == 0x80;
      c = (c << 6) | (next & 0x3F);
    }
    if (!valid) {
      out += U'\uFFFD';
      ++i;
      continue;
    }
    out += c;
    i += length;
  }
  return out;
}

std::string utf8_encode(std::u32string_view code_points) {
  std::string out;
  out.reserve(code_points.size());
  for (const char32_t c : code_points) append_utf8(out, c);
  return out;
}

bool python_is_space(char32_t c) {
  return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

std::string python_float(double value) {
  if (std::isnan(value)) return "nan";
  if (std::isinf(value)) return value > 0 ? "inf" : "-inf";
  // The shortest round-trip digits, then Python's layout of them (float_repr_style 'short').
  char buffer[64];
  const auto [end, error] = std::to_chars(buffer, buffer + sizeof(buffer), value, std::chars_format::scientific);
  const std::string scientific(buffer, end);  // [-]d[.ddd]e[+-]xx
  const size_t e = scientific.find('e');
  const bool negative = scientific[0] == '-';
  std::string digits;
  for (size_t i = negative ? 1 : 0; i < e; ++i) {
    if (scientific[i] != '.') digits += scientific[i];
  }
  const int exponent = std::atoi(scientific.c_str() + e + 1);
  std::string out = negative ? "-" : "";
  if (exponent >= -4 && exponent < 16) {
    if (exponent < 0) {
      out += "0." + std::string(static_cast<size_t>(-exponent - 1), '0') + digits;
    } else if (static_cast<int>(digits.size()) <= exponent + 1) {
      out += digits + std::string(static_cast<size_t>(exponent + 1) - digits.size(), '0') + ".0";
    } else {
      out += digits.substr(0, exponent + 1) + "." + digits.substr(exponent + 1);
    }
    return out;
  }
  out += digits.substr(0, 1);
  if (digits.size() > 1) out += "." + digits.substr(1);
  out += fmt::format("e{}{:02d}", exponent < 0 ? '-' : '+', std::abs(exponent));
  return out;
}

std::string python_repr(std::string_view text) {
  const bool has_single = text.find('\'') != std::string_view::npos;
  const bool has_double = text.find('"') != std::string_view::npos;
  const char quote = has_single && !has_double ? '"' : '\'';
  std::string out(1, quote);
  for (const char32_t c : utf8_decode(text)) {
    if (c == static_cast<char32_t>(quote) || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\r') {
      out += "\\r";
    } else if (c == '\t') {
      out += "\\t";
    } else if (!python_printable(c)) {
      append_repr_escape(out, c);
    } else {
      append_utf8(out, c);
    }
  }
  out += quote;
  return out;
}

std::string python_str(const JsonValue& value) {
  switch (value.type()) {
    case JsonValue::value_t::null: return "None";
    case JsonValue::value_t::boolean: return value.get<bool>() ? "True" : "False";
    case JsonValue::value_t::string: return value.get<std::string>();
    case JsonValue::value_t::number_float: return python_float(value.get<double>());
    case JsonValue::value_t::array: {
      std::string out = "[";
      for (size_t i = 0; i < value.size(); ++i) {
        if (i > 0) out += ", ";
        append_repr(out, value[i]);
      }
      return out + "]";
    }
    case JsonValue::value_t::object: {
      std::string out = "{";
      bool first = true;
      for (const auto& item : value.items()) {
        if (!first) out += ", ";
        first = false;
        out += python_repr(item.key()) + ": ";
        append_repr(out, item.value());
      }
      return out + "}";
    }
    default: return value.dump();  // integers
  }
}

std::string python_json_dumps(const JsonValue& value, const JsonDumpOptions& options) {
  std::string out;
  append_json(out, value, options, 0);
  return out;
}

}  // namespace uberlm
