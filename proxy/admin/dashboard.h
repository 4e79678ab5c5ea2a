#pragma once

#include <string_view>

namespace sluice {

// The operator dashboard served at GET /dashboard on the admin listener: one self-contained HTML
// page (inline CSS and JS, nothing fetched from elsewhere) that polls the admin JSON endpoints.
// Its source is proxy/admin/dashboard.html, embedded at build time (embed_dashboard.cmake).
std::string_view dashboardHtml();

}  // namespace sluice
