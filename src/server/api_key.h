#pragma once
// The API-key check of `serve --api-key`: "Authorization: Bearer <key>", byte for byte.
#include <string_view>

namespace uberlm {

// Whether the Authorization header value is exactly "Bearer " + key. The time taken depends on the
// lengths only, never on where the first differing byte is.
bool bearer_key_matches(std::string_view authorization, std::string_view key);

}  // namespace uberlm
