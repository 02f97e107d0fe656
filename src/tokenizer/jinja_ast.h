#pragma once
// The parsed form of a Jinja template (jinja_parser.cpp builds it, jinja_render.cpp walks it).
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "tokenizer/python_format.h"

namespace uberlm::jinja {

struct Expr {
  enum class Kind {
    Literal,      // literal
    Name,         // name
    List,         // items
    Dict,         // items: key, value, key, value, ...
    Attribute,    // items[0].name
    Item,         // items[0][items[1]]
    Slice,        // items[0][items[1]:items[2]:items[3]], each bound may be null
    Call,         // items[0](items[1..], kwargs)
    Filter,       // items[0] | name(items[1..], kwargs)
    Test,         // items[0] is [not] name(items[1..])
    Unary,        // name ("not", "-", "+") items[0]
    Binary,       // items[0] name items[1]; name is an operator, "and", "or", "in", "not in"
    Conditional,  // items[0] if items[1] else items[2] (null: undefined)
  };
  Kind kind;
  int line = 0;
  std::string name;
  JsonValue literal;
  bool negated = false;
  std::vector<std::unique_ptr<Expr>> items;
  std::vector<std::pair<std::string, std::unique_ptr<Expr>>> kwargs;
};

struct Node {
  enum class Kind {
    Sequence,    // body (an if branch: taken when condition holds)
    Text,        // text
    Output,      // {{ value }}
    If,          // body: one Sequence per branch, with its condition (null for else)
    For,         // for targets in value [if condition]: body [else: else_body]
    Set,         // set targets[0] = value, or set targets[0].attribute = value
    Macro,       // macro name(targets = defaults): body
    Break,
    Continue,
  };
  Kind kind = Kind::Sequence;
  int line = 0;
  std::string text;
  std::string name;
  std::string attribute;
  std::vector<std::string> targets;
  std::unique_ptr<Expr> value;
  std::unique_ptr<Expr> condition;
  std::vector<std::unique_ptr<Expr>> defaults;  // one per macro parameter, null when it has none
  std::vector<Node> body;
  std::vector<Node> else_body;
};

// Throws TemplateError naming the line.
Node parse(const std::string& source);

}  // namespace uberlm::jinja
