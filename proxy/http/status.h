#pragma once
#include <string_view>

namespace sluice {

// The standard reason phrase for a status code ("Unknown" for unregistered codes).
std::string_view statusReason(int status);

}  // namespace sluice
