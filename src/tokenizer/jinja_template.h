#pragma once
// A Jinja2 subset written for chat templates (Qwen3.5, Qwen3, Llama 3, SmolLM2 and templates like them),
// rendered as transformers renders them: jinja2 with trim_blocks and lstrip_blocks, the loopcontrols
// extension, its own tojson, and the globals raise_exception and strftime_now. Debian ships no C++ Jinja
// engine, hence this one.
//
// Covered: {{ }}, {% if/elif/else %}, {% for a[, b] in x [if c] %} with loop.* and {% else %},
// {% set x = ... %} and {% set ns.attr = ... %} with namespace(), {% macro %} with default arguments,
// {% break %}, {% continue %}, {% generation %}, comments, whitespace control ({%- -%} {%+ %}),
// Python-like expressions (arithmetic, comparisons, in, and/or/not, x if c else y, slices, literals),
// filters, `is` tests and the string and dict methods templates call (jinja_render.cpp lists them).
// Anything else is an error naming the line, never a silent difference.
#include <memory>
#include <string>

#include "core/error.h"
#include "tokenizer/python_format.h"

namespace uberlm {

namespace jinja {
struct Node;
}

// A template that cannot be parsed, or whose rendering failed (raise_exception, a type error, an
// undefined value used as an object). The message names the line.
class TemplateError : public Error {
 public:
  explicit TemplateError(const std::string& message) : Error(message) {}
};

class JinjaTemplate {
 public:
  // Throws TemplateError.
  explicit JinjaTemplate(std::string source);
  ~JinjaTemplate();
  JinjaTemplate(JinjaTemplate&&) noexcept;
  JinjaTemplate& operator=(JinjaTemplate&&) noexcept;

  // context: a JSON object whose members are the template's variables. Throws TemplateError.
  std::string render(const JsonValue& context) const;

 private:
  std::unique_ptr<const jinja::Node> root_;
};

}  // namespace uberlm
