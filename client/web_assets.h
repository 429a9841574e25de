// The chat page's files (client/web/), built into stip-client
// (cmake/embed_web_assets.cmake writes web_assets.cc): served at GET /NAME,
// index.html also at GET /.
#pragma once

#include <cstddef>
#include <vector>

namespace stip {

struct WebAsset {
  const char* name;          // "index.html"
  const char* content_type;  // "text/html; charset=utf-8"
  const char* data;
  size_t size;
};

const std::vector<WebAsset>& WebAssets();

}  // namespace stip
