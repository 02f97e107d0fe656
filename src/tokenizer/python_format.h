#pragma once
// How Python writes a JSON-like value, for the Jinja engine (jinja_template.h): chat templates print
// values with str() and serialise them with json.dumps, and a prompt must match transformers' byte for
// byte. Values are nlohmann::ordered_json because Python dicts keep insertion order (a tool schema's
// keys print in the order the client sent them).
#include <optional>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

namespace uberlm {

using JsonValue = nlohmann::ordered_json;

// str(value): None, True, 1.5, 'text' unquoted at the top level, [1, 'a'], {'k': 'v'}.
std::string python_str(const JsonValue& value);
// repr(text): quoted as Python quotes it ('x', "it's"), with \n \t \\ and control bytes escaped.
std::string python_repr(std::string_view text);
// repr(number) of a float: the shortest round-trip digits, fixed for 1e-4 <= |x| < 1e16 ('1.0', '1e-05').
std::string python_float(double value);

struct JsonDumpOptions {
  std::optional<int> indent;  // none: one line with ", " between items; n: newlines, n spaces a level
  bool ensure_ascii = false;  // escape every non-ASCII character as \uXXXX
  bool sort_keys = false;
};
// json.dumps(value, ...) with Python's defaults for the separators.
std::string python_json_dumps(const JsonValue& value, const JsonDumpOptions& options);

// Python's str.isspace() for one code point.
bool python_is_space(char32_t code_point);

// Python indexes strings by code point. Invalid UTF-8 bytes decode to U+FFFD.
std::u32string utf8_decode(std::string_view text);
std::string utf8_encode(std::u32string_view code_points);

}  // namespace uberlm
