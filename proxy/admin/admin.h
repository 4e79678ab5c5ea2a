#pragma once
// The admin API served on its own listener by the control worker (never on a data worker).
// Reads may be open on loopback; every mutating call needs the bearer token.
#include <string_view>

#include "proxy/http/http_parser.h"
#include "proxy/server/client_connection.h"

namespace sluice {

class Server;

LocalResponse handleAdminRequest(Server* server, const HttpMessageHead& head,
                                 std::string_view body);

}  // namespace sluice
