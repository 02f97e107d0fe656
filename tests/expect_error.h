#pragma once
// The check every bad-input test makes: the call throws uberlm::Error, and the message contains each
// of the needles (the file, tensor or field at fault, and what is wrong with it).
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "core/error.h"

namespace uberlm {

template <typename Call>
void expect_error_containing(Call&& call, const std::vector<std::string>& needles) {
  try {
    call();
    ADD_FAILURE() << "no error; expected one containing '" << (needles.empty() ? "" : needles.front()) << "'";
  } catch (const Error& error) {
    const std::string message = error.what();
    for (const std::string& needle : needles) {
      EXPECT_NE(message.find(needle), std::string::npos) << "message: " << message << "\nmissing: " << needle;
    }
  }
}

}  // namespace uberlm
