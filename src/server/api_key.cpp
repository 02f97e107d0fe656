#include "server/api_key.h"

#include <algorithm>
#include <string>

namespace uberlm {

bool bearer_key_matches(std::string_view authorization, std::string_view key) {
  const std::string expected = "Bearer " + std::string(key);
  size_t difference = authorization.size() ^ expected.size();
  const size_t length = std::max(authorization.size(), expected.size());
  for (size_t i = 0; i < length; ++i) {
    const unsigned char given = i < authorization.size() ? static_cast<unsigned char>(authorization[i]) : 0;
    const unsigned char wanted = i < expected.size() ? static_cast<unsigned char>(expected[i]) : 0;
    difference |= given ^ wanted;
  }
  return difference == 0;
}

}  // namespace uberlm
