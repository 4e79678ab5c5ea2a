#include <re2/re2.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "proxy/config/config_loader.h"

namespace sluice {
namespace {

namespace fs = std::filesystem;

const char* kMinimal = R"(
listeners:
  - address: 127.0.0.1:8080
upstreams:
  app:
    servers:
      - address: 127.0.0.1:9080
routes:
  - name: all
    upstream: app
)";

std::string joinErrors(const std::vector<ConfigError>& errors) {
  std::string out;
  for (const auto& e : errors) out += e.format() + "\n";
  return out;
}

ConfigPtr loadOk(const std::string& yaml) {
  ConfigLoadResult r = loadConfigString(yaml, "test.yaml");
  INFO(joinErrors(r.errors));
  REQUIRE(r.ok());
  return r.config;
}

std::vector<ConfigError> loadErrors(const std::string& yaml) {
  ConfigLoadResult r = loadConfigString(yaml, "test.yaml");
  REQUIRE_FALSE(r.ok());
  REQUIRE(r.config == nullptr);
  REQUIRE_FALSE(r.errors.empty());
  return r.errors;
}

// The one error a broken config is expected to produce.
ConfigError loadError(const std::string& yaml) {
  auto errors = loadErrors(yaml);
  INFO(joinErrors(errors));
  REQUIRE(errors.size() == 1);
  return errors[0];
}

// A directory that is the working directory for the lifetime of the object.
class ScopedTempCwd {
 public:
  ScopedTempCwd() {
    old_ = fs::current_path();
    char tmpl[] = "/tmp/sluice-config-test-XXXXXX";
    REQUIRE(mkdtemp(tmpl) != nullptr);
    dir_ = tmpl;
    fs::current_path(dir_);
  }
  ~ScopedTempCwd() {
    fs::current_path(old_);
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  void write(const std::string& rel, const std::string& content) {
    fs::path p = dir_ / rel;
    fs::create_directories(p.parent_path());
    std::ofstream(p) << content;
  }
  const fs::path& dir() const { return dir_; }

 private:
  fs::path old_;
  fs::path dir_;
};

TEST_CASE("ConfigError formats with and without a position", "[config]") {
  CHECK(ConfigError{"a.yaml", 3, 7, "boom"}.format() == "a.yaml:3:7: boom");
  CHECK(ConfigError{"a.yaml", 0, 0, "boom"}.format() == "a.yaml: boom");
}

TEST_CASE("minimal config gets the defaults of config.h", "[config]") {
  ConfigPtr c = loadOk(kMinimal);
  const Config defaults;
  CHECK(c->source_path == "test.yaml");
  CHECK(c->hash.size() == 64);
  CHECK(c->workers >= 1);
  CHECK(c->workers == std::clamp(static_cast<int>(std::thread::hardware_concurrency()), 1, 256));
  REQUIRE(c->listeners.size() == 1);
  CHECK(c->listeners[0].host == "127.0.0.1");
  CHECK(c->listeners[0].port == 8080);
  CHECK(c->listeners[0].name == "127.0.0.1:8080");
  CHECK(c->listeners[0].backlog == 511);
  CHECK_FALSE(c->listeners[0].proxy_protocol);
  CHECK(c->admin.enabled);
  CHECK(c->admin.host == "127.0.0.1");
  CHECK(c->admin.port == 9901);
  CHECK(c->admin.token.empty());
  CHECK(c->client.max_body_size == defaults.client.max_body_size);
  CHECK(c->client.header_timeout == defaults.client.header_timeout);
  CHECK(c->client.buffer_size == defaults.client.buffer_size);
  CHECK(c->client.max_connections == 0);  // auto
  CHECK(c->max_open_files == 0);          // auto
  CHECK(c->trusted_proxies.empty());
  CHECK(c->request_id_header == "X-Request-Id");
  CHECK_FALSE(c->trace_start);
  CHECK(c->drain_timeout == 10 * kSeconds);
  CHECK(c->log_level == "info");
  CHECK(c->error_log == "stderr");
  CHECK(c->access_log.target == "stdout");
  REQUIRE(c->upstreams.size() == 1);
  const UpstreamConfig& u = c->upstreams[0];
  CHECK(u.name == "app");
  CHECK(u.balance == BalanceKind::kRoundRobin);
  REQUIRE(u.servers.size() == 1);
  CHECK(u.servers[0].address() == "127.0.0.1:9080");
  CHECK(u.servers[0].weight == 1);
  CHECK_FALSE(u.health_check.enabled);
  CHECK(u.retries == 1);
  CHECK(u.connect_timeout == 1 * kSeconds);
  REQUIRE(c->routes.size() == 1);
  CHECK(c->routes[0].path_kind == PathMatchKind::kAny);
  CHECK(c->routes[0].upstream == "app");
  CHECK(c->findUpstream("app") == &c->upstreams[0]);
}

TEST_CASE("the hash is the SHA-256 of the bytes", "[config]") {
  ConfigPtr c = loadOk("listeners: [{address: 127.0.0.1:8080}]");
  // sha256 -n 'listeners: [{address: 127.0.0.1:8080}]'
  std::string a = c->hash;
  std::string b = loadOk("listeners: [{address: 127.0.0.1:8080}] ")->hash;
  CHECK(a.size() == 64);
  CHECK(a != b);
}

TEST_CASE("every key of the schema is read", "[config]") {
  ScopedTempCwd cwd;
  cwd.write("secrets/admin.token", "  s3cret\n");
  ConfigPtr c = loadOk(R"(
workers: 3
listeners:
  - address: 0.0.0.0:8080
    name: public
    proxy_protocol: true
    backlog: 1024
  - address: "[::1]:8081"
admin:
  address: "[::1]:9902"
  enabled: false
  token_file: secrets/admin.token
  allow: [10.0.0.0/8, "fd00::/8"]
client:
  max_uri_size: 4k
  max_header_size: 16k
  max_headers: 50
  max_body_size: 0
  header_timeout: 5s
  body_timeout: 15s
  keepalive_timeout: 75s
  send_timeout: 20s
  max_requests_per_connection: 500
  buffer_size: 16k
  max_connections: 20000
max_open_files: 65536
trusted_proxies: [127.0.0.1/32, ::1/128, 10.0.0.0/8]
request_id_header: X-Req
tracing: {start_traces: true}
drain_timeout: 0s
log: {level: debug, error: /var/log/sluice/error.log, access: off}
upstreams:
  shop:
    balance: hash
    hash_key: header:X-Member-Id
    servers:
      - {address: 10.0.0.1:80, weight: 5}
      - {address: "[2001:db8::1]:80"}
    keepalive: {max_idle: 8, idle_timeout: 30s}
    connect_timeout: 250ms
    send_timeout: 2s
    read_timeout: 3s
    passive_health: {max_fails: 5, fail_timeout: 20s}
    health_check:
      path: /ping
      host: shop.internal
      interval: 5s
      timeout: 500ms
      rise: 1
      fall: 2
      expect_status: 200-299
    retry: {attempts: 2, budget_percent: 12.5, min_concurrent: 1}
  other:
    balance: least_conn
    servers: [{address: 10.0.0.2:80}]
    health_check:
      enabled: false
routes:
  - name: item
    match:
      host: [Shop.Example.com, "*.example.net"]
      path: {regex: "^/items/[0-9]+$"}
      methods: [get, HEAD]
    upstream: shop
    connect_timeout: 100ms
    send_timeout: 1s
    read_timeout: 2s
    max_body_size: 1m
  - name: exact
    match: {host: api.example.com, path: {exact: /status}}
    upstream: other
  - name: health
    match: {path: {prefix: /healthz}}
    direct_response: {status: 200, body: "ok\n"}
)");
  CHECK(c->workers == 3);
  REQUIRE(c->listeners.size() == 2);
  CHECK(c->listeners[0].name == "public");
  CHECK(c->listeners[0].host == "0.0.0.0");
  CHECK(c->listeners[0].proxy_protocol);
  CHECK(c->listeners[0].backlog == 1024);
  CHECK(c->listeners[1].host == "::1");
  CHECK(c->listeners[1].port == 8081);
  CHECK(c->listeners[1].name == "[::1]:8081");

  CHECK(c->admin.host == "::1");
  CHECK(c->admin.port == 9902);
  CHECK_FALSE(c->admin.enabled);
  CHECK(c->admin.token == "s3cret");
  CHECK(c->admin.token_file == "secrets/admin.token");
  IpAddress ip;
  REQUIRE(IpAddress::parse("10.1.1.1", &ip));
  CHECK(c->admin.allow.contains(ip));
  CHECK(c->admin.allow.size() == 2);

  CHECK(c->client.max_uri_size == 4096);
  CHECK(c->client.max_header_size == 16384);
  CHECK(c->client.max_headers == 50);
  CHECK(c->client.max_body_size == 0);
  CHECK(c->client.header_timeout == 5 * kSeconds);
  CHECK(c->client.body_timeout == 15 * kSeconds);
  CHECK(c->client.keepalive_timeout == 75 * kSeconds);
  CHECK(c->client.send_timeout == 20 * kSeconds);
  CHECK(c->client.max_requests_per_connection == 500);
  CHECK(c->client.buffer_size == 16384);
  CHECK(c->client.max_connections == 20000);
  CHECK(c->max_open_files == 65536);
  CHECK(c->trusted_proxies.size() == 3);
  CHECK(c->trusted_proxies.contains(ip));
  CHECK(c->request_id_header == "X-Req");
  CHECK(c->trace_start);
  CHECK(c->drain_timeout == 0);
  CHECK(c->log_level == "debug");
  CHECK(c->error_log == "/var/log/sluice/error.log");
  CHECK(c->access_log.target == "off");

  REQUIRE(c->upstreams.size() == 2);
  const UpstreamConfig& u = c->upstreams[0];
  CHECK(u.name == "shop");
  CHECK(u.balance == BalanceKind::kHash);
  CHECK(u.hash_key == "header:X-Member-Id");
  REQUIRE(u.servers.size() == 2);
  CHECK(u.servers[0].address() == "10.0.0.1:80");
  CHECK(u.servers[0].weight == 5);
  CHECK(u.servers[1].host == "2001:db8::1");
  CHECK(u.servers[1].address() == "[2001:db8::1]:80");
  CHECK(u.keepalive_max_idle == 8);
  CHECK(u.keepalive_idle_timeout == 30 * kSeconds);
  CHECK(u.connect_timeout == 250 * kMillis);
  CHECK(u.send_timeout == 2 * kSeconds);
  CHECK(u.read_timeout == 3 * kSeconds);
  CHECK(u.max_fails == 5);
  CHECK(u.fail_timeout == 20 * kSeconds);
  CHECK(u.health_check.enabled);
  CHECK(u.health_check.path == "/ping");
  CHECK(u.health_check.host == "shop.internal");
  CHECK(u.health_check.interval == 5 * kSeconds);
  CHECK(u.health_check.timeout == 500 * kMillis);
  CHECK(u.health_check.rise == 1);
  CHECK(u.health_check.fall == 2);
  CHECK(u.health_check.expect_status_min == 200);
  CHECK(u.health_check.expect_status_max == 299);
  CHECK(u.retries == 2);
  CHECK(u.retry_budget_percent == 12.5);
  CHECK(u.retry_min_concurrent == 1);
  CHECK(c->upstreams[1].balance == BalanceKind::kLeastConn);
  CHECK_FALSE(c->upstreams[1].health_check.enabled);

  REQUIRE(c->routes.size() == 3);
  const RouteConfig& r = c->routes[0];
  CHECK(r.name == "item");
  CHECK(r.hosts == std::vector<std::string>{"shop.example.com", "*.example.net"});
  CHECK(r.path_kind == PathMatchKind::kRegex);
  REQUIRE(r.regex != nullptr);
  CHECK(RE2::FullMatch("/items/42", *r.regex));
  CHECK_FALSE(RE2::FullMatch("/items/x", *r.regex));
  CHECK(r.methods == std::vector<std::string>{"GET", "HEAD"});
  CHECK(r.upstream == "shop");
  CHECK(r.connect_timeout == 100 * kMillis);
  CHECK(r.send_timeout == 1 * kSeconds);
  CHECK(r.read_timeout == 2 * kSeconds);
  REQUIRE(r.max_body_size.has_value());
  CHECK(*r.max_body_size == 1024 * 1024);
  CHECK(c->routes[1].hosts == std::vector<std::string>{"api.example.com"});
  CHECK(c->routes[1].path_kind == PathMatchKind::kExact);
  CHECK(c->routes[1].path == "/status");
  CHECK(c->routes[1].connect_timeout == 0);
  CHECK_FALSE(c->routes[1].max_body_size.has_value());
  CHECK(c->routes[2].path_kind == PathMatchKind::kPrefix);
  CHECK(c->routes[2].path == "/healthz");
  CHECK(c->routes[2].direct_status == 200);
  CHECK(c->routes[2].direct_body == "ok\n");
  CHECK(c->routes[2].upstream.empty());
}

TEST_CASE("YAML syntax errors carry their position", "[config]") {
  ConfigError e = loadError("listeners:\n  - address: [1, 2\nadmin: {}\n");
  CHECK(e.file == "test.yaml");
  CHECK(e.line >= 2);
  CHECK(e.col >= 1);
  CHECK_THAT(e.message, Catch::Contains("YAML syntax error"));
  CHECK_THAT(e.format(), Catch::StartsWith("test.yaml:" + std::to_string(e.line) + ":"));

  ConfigError bad_indent = loadError("listeners:\n  - address: 127.0.0.1:8080\n   name: x\n");
  CHECK(bad_indent.line == 3);
  CHECK_THAT(bad_indent.message, Catch::Contains("YAML syntax error"));
}

TEST_CASE("unknown keys are errors with a suggestion", "[config]") {
  ConfigError e = loadError(std::string(kMinimal) + "listner: []\n");
  CHECK(e.line == 11);
  CHECK(e.col == 1);
  CHECK(e.message == "unknown key 'listner' in the top level (did you mean 'listeners'?)");

  ConfigError nested = loadError(R"(listeners:
  - address: 127.0.0.1:8080
    proxy_protocl: true
)");
  CHECK(nested.format() ==
        "test.yaml:3:5: unknown key 'proxy_protocl' in listeners[0] (did you mean "
        "'proxy_protocol'?)");

  // Nothing close: no suggestion.
  ConfigError far = loadError(R"(listeners:
  - address: 127.0.0.1:8080
    listner: x
)");
  CHECK(far.message == "unknown key 'listner' in listeners[0]");

  ConfigError deep = loadError(R"(listeners: [{address: 127.0.0.1:8080}]
upstreams:
  app:
    servers: [{address: 127.0.0.1:9080}]
    health_check: {intervall: 2s}
)");
  CHECK(deep.line == 5);
  CHECK(deep.message ==
        "unknown key 'intervall' in upstreams.app.health_check (did you mean 'interval'?)");
}

TEST_CASE("duplicate keys are errors", "[config]") {
  ConfigError e = loadError(R"(listeners: [{address: 127.0.0.1:8080}]
drain_timeout: 1s
drain_timeout: 2s
)");
  CHECK(e.line == 3);
  CHECK(e.message == "duplicate key 'drain_timeout' in the top level");
}

TEST_CASE("max_connections and max_open_files take auto or a bounded integer", "[config]") {
  CHECK(loadError("listeners: [{address: 127.0.0.1:8080}]\nclient: {max_connections: 0}\n").message ==
        "client.max_connections: expected \"auto\" or an integer 1..10000000, got '0'");
  CHECK(loadError("listeners: [{address: 127.0.0.1:8080}]\nmax_open_files: lots\n").message ==
        "max_open_files: expected \"auto\" or an integer 64..100000000, got 'lots'");
}

TEST_CASE("reload: watch and its debounce", "[config]") {
  auto ok = loadConfigString("listeners: [{address: 127.0.0.1:8080}]\nreload: {watch: true, debounce: 2s}\n", "t.yaml");
  REQUIRE(ok.ok());
  CHECK(ok.config->reload_watch);
  CHECK(ok.config->reload_debounce == 2 * kSeconds);
  auto def = loadConfigString("listeners: [{address: 127.0.0.1:8080}]\n", "t.yaml");
  REQUIRE(def.ok());
  CHECK_FALSE(def.config->reload_watch);
  CHECK(def.config->reload_debounce == 500 * kMillis);
  CHECK(loadError("listeners: [{address: 127.0.0.1:8080}]\nreload: {watch: true, debounce: 1ms}\n").format() ==
        "test.yaml:2:33: reload.debounce: must be between 10ms and 60s");
  CHECK(loadError("listeners: [{address: 127.0.0.1:8080}]\nreload: {wach: true}\n").message ==
        "unknown key 'wach' in reload (did you mean 'watch'?)");
}

TEST_CASE("bad durations are errors at the value", "[config]") {
  ConfigError e = loadError(R"(listeners: [{address: 127.0.0.1:8080}]
client:
  header_timeout: 5
)");
  CHECK(e.format() ==
        "test.yaml:3:19: client.header_timeout: expected a duration like 250ms or 5s, got '5'");
  CHECK_THAT(loadError("listeners: [{address: 127.0.0.1:8080}]\ndrain_timeout: soon\n").message,
             Catch::Contains("expected a duration like 250ms or 5s, got 'soon'"));
  CHECK_THAT(loadError("listeners: [{address: 127.0.0.1:8080}]\nclient: {body_timeout: 0s}\n")
                 .message,
             Catch::Contains("client.body_timeout: must be greater than zero"));
  CHECK_THAT(
      loadError("listeners: [{address: 127.0.0.1:8080}]\nclient: {body_timeout: [1s]}\n").message,
      Catch::Contains("client.body_timeout: expected a duration like 250ms or 5s, got a list"));
}

TEST_CASE("bad sizes are errors at the value", "[config]") {
  ConfigError e = loadError(R"(listeners: [{address: 127.0.0.1:8080}]
client:
  max_body_size: 8 megabytes
)");
  CHECK(e.format() ==
        "test.yaml:3:18: client.max_body_size: expected a size like 512, 16k or 8m, got '8 "
        "megabytes'");
  ConfigError small = loadError("listeners: [{address: 127.0.0.1:8080}]\nclient: {buffer_size: 1k}\n");
  CHECK(small.message == "client.buffer_size: must be at least 4096 bytes, got '1k'");
}

TEST_CASE("bad CIDRs are errors at the list item", "[config]") {
  ConfigError e = loadError(R"(listeners: [{address: 127.0.0.1:8080}]
trusted_proxies:
  - 10.0.0.0/8
  - 10.0.0.0/33
)");
  CHECK(e.format() ==
        "test.yaml:4:5: trusted_proxies[1]: expected a CIDR like 10.0.0.0/8 or ::1/128, got "
        "'10.0.0.0/33'");
  CHECK_THAT(loadError("listeners: [{address: 127.0.0.1:8080}]\nadmin: {allow: [lan]}\n").message,
             Catch::Contains("admin.allow[0]: expected a CIDR"));
}

TEST_CASE("a route naming a missing upstream points at the name", "[config]") {
  ConfigError e = loadError(R"(listeners: [{address: 127.0.0.1:8080}]
upstreams:
  storefront:
    servers: [{address: 127.0.0.1:9080}]
routes:
  - name: api
    upstream: storefrnt
)");
  CHECK(e.line == 7);
  CHECK(e.col == 15);
  CHECK(e.message ==
        "routes[0].upstream: unknown upstream 'storefrnt' (did you mean 'storefront'?)");
}

TEST_CASE("bad regexes report RE2's message at the regex", "[config]") {
  ConfigError e = loadError(R"(listeners: [{address: 127.0.0.1:8080}]
routes:
  - name: r
    match:
      path: {regex: "^/items/(["}
    direct_response: {status: 404}
)");
  CHECK(e.line == 5);
  CHECK(e.col == 21);
  CHECK_THAT(e.message, Catch::StartsWith("routes[0].match.path.regex: invalid regex: "));
  CHECK_THAT(e.message, Catch::Contains("missing ]"));
}

TEST_CASE("path match needs exactly one kind and a leading slash", "[config]") {
  std::string head = "listeners: [{address: 127.0.0.1:8080}]\nroutes:\n  - name: r\n"
                     "    direct_response: {status: 200}\n";
  CHECK_THAT(loadError(head + "    match: {path: {exact: /a, prefix: /b}}\n").message,
             Catch::Contains("expected exactly one of exact, prefix or regex"));
  CHECK_THAT(loadError(head + "    match: {path: {}}\n").message,
             Catch::Contains("expected exactly one of exact, prefix or regex"));
  CHECK(loadError(head + "    match: {path: {prefix: api/}}\n").message ==
        "routes[0].match.path.prefix: must start with '/', got 'api/'");
  CHECK_THAT(loadError(head + "    match: {methods: [G ET]}\n").message,
             Catch::Contains("'G ET' is not a valid HTTP method"));
}

TEST_CASE("duplicate route names are errors at the second name", "[config]") {
  ConfigError e = loadError(R"(listeners: [{address: 127.0.0.1:8080}]
routes:
  - name: home
    direct_response: {status: 200}
  - name: home
    direct_response: {status: 404}
)");
  CHECK(e.format() == "test.yaml:5:11: routes[1]: duplicate route name 'home'");
}

TEST_CASE("a config without listeners is refused", "[config]") {
  ConfigError missing = loadError("workers: 2\n");
  CHECK(missing.line == 0);
  CHECK_THAT(missing.format(),
             Catch::StartsWith("test.yaml: at least one listener is required"));
  ConfigError empty = loadError("listeners: []\n");
  CHECK(empty.format() == "test.yaml:1:12: listeners: at least one listener is required");
  CHECK_THAT(loadError("").message, Catch::Contains("at least one listener is required"));
  CHECK_THAT(loadError("# only a comment\n").message,
             Catch::Contains("at least one listener is required"));
  CHECK_THAT(loadError("- a\n- b\n").message,
             Catch::Contains("the document: expected a mapping, got a list"));
}

TEST_CASE("duplicate listener addresses are refused", "[config]") {
  ConfigError e = loadError(R"(listeners:
  - address: 127.0.0.1:8080
  - address: 127.0.0.1:8080
)");
  CHECK(e.format() ==
        "test.yaml:3:14: listeners[1].address: duplicate listener address '127.0.0.1:8080'");
  CHECK_THAT(loadError("listeners: [{address: 127.0.0.1:8080}]\nadmin: {address: 127.0.0.1:8080}\n")
                 .message,
             Catch::Contains("is also a listener address"));
}

TEST_CASE("token and token_file together are refused", "[config]") {
  ConfigError e = loadError(R"(listeners: [{address: 127.0.0.1:8080}]
admin:
  token: abc
  token_file: /etc/sluice/admin.token
)");
  CHECK(e.line == 4);
  CHECK(e.message == "admin: token and token_file are mutually exclusive; keep one");
}

TEST_CASE("an unreadable token_file is an error at its node", "[config]") {
  ConfigError e = loadError(R"(listeners: [{address: 127.0.0.1:8080}]
admin:
  token_file: /nonexistent/sluice/admin.token
)");
  CHECK(e.line == 3);
  CHECK(e.col == 15);
  CHECK_THAT(e.message, Catch::StartsWith("admin.token_file: cannot read "
                                          "'/nonexistent/sluice/admin.token': "));

  ScopedTempCwd cwd;
  cwd.write("empty.token", "\n\n");
  CHECK_THAT(loadError("listeners: [{address: 127.0.0.1:8080}]\nadmin: {token_file: empty.token}\n")
                 .message,
             Catch::Contains("is empty"));
}

TEST_CASE("addresses must be numeric host:port", "[config]") {
  std::string head = "listeners: [{address: 127.0.0.1:8080}]\nupstreams:\n  app:\n    servers:\n";
  ConfigError host = loadError(head + "      - address: backend.internal:9080\n");
  CHECK(host.line == 5);
  CHECK(host.col == 18);
  CHECK_THAT(host.message, Catch::Contains("'backend.internal' is not a numeric IP address"));
  CHECK_THAT(host.message, Catch::Contains("sluice does not resolve host names"));
  CHECK_THAT(loadError(head + "      - address: ::1:9080\n").message,
             Catch::Contains("IPv6 addresses need brackets"));
  CHECK_THAT(loadError(head + "      - address: 127.0.0.1\n").message,
             Catch::Contains("expected host:port"));
  CHECK_THAT(loadError(head + "      - address: 127.0.0.1:0\n").message,
             Catch::Contains("port must be a number 1..65535, got '0'"));
  CHECK_THAT(loadError(head + "      - address: 127.0.0.1:70000\n").message,
             Catch::Contains("port must be a number 1..65535"));
  CHECK_THAT(loadError(head + "      - address: \"[127.0.0.1]:80\"\n").message,
             Catch::Contains("is not a numeric IP address"));
  CHECK_THAT(loadError(head + "      - {address: 127.0.0.1:80, weight: 0}\n").message,
             Catch::Contains("weight: expected an integer 1..1000, got '0'"));
  CHECK_THAT(loadError(head + "      - address: 127.0.0.1:80\n      - address: 127.0.0.1:80\n")
                 .message,
             Catch::Contains("duplicate server '127.0.0.1:80'"));
  CHECK_THAT(loadError(head.substr(0, head.size() - 13) + "    servers: []\n").message,
             Catch::Contains("at least one server is required"));
}

TEST_CASE("enums, integers and booleans are type-checked", "[config]") {
  std::string head = "listeners: [{address: 127.0.0.1:8080}]\n";
  CHECK(loadError(head + "workers: many\n").message ==
        "workers: expected \"auto\" or an integer 1..256, got 'many'");
  CHECK_THAT(loadError(head + "workers: 0\n").message, Catch::Contains("got '0'"));
  CHECK_THAT(loadError(head + "workers: 257\n").message, Catch::Contains("got '257'"));
  CHECK(loadOk(head + "workers: auto\n")->workers >= 1);
  CHECK(loadError(head + "log: {level: verbose}\n").message ==
        "log.level: expected one of debug, info, warn, error, got 'verbose'");
  CHECK(loadError(head + "upstreams: {a: {balance: round_robbin, servers: [{address: "
                         "127.0.0.1:1}]}}\n")
            .message ==
        "upstreams.a.balance: expected one of round_robin, least_conn, hash, got "
        "'round_robbin' (did you mean 'round_robin'?)");
  CHECK(loadError(head + "tracing: {start_traces: yes}\n").message ==
        "tracing.start_traces: expected true or false, got 'yes'");
  CHECK_THAT(loadError(head + "client: {max_headers: 1.5}\n").message,
             Catch::Contains("expected an integer 1..10000, got '1.5'"));
  CHECK_THAT(loadError(head + "request_id_header: \"X Request\"\n").message,
             Catch::Contains("is not a valid header name"));
  CHECK_THAT(loadError(head + "client: 5\n").message,
             Catch::Contains("client: expected a mapping, got '5'"));
}

TEST_CASE("upstream details are validated", "[config]") {
  std::string head = "listeners: [{address: 127.0.0.1:8080}]\nupstreams:\n  app:\n"
                     "    servers: [{address: 127.0.0.1:9080}]\n";
  CHECK(loadError(head + "    hash_key: client_ip\n").message ==
        "upstreams.app.hash_key: only applies with balance: hash");
  CHECK_THAT(loadError(head + "    balance: hash\n    hash_key: body\n").message,
             Catch::Contains("expected client_ip, path, uri, header:NAME"));
  // A bad balance is one error, not two: hash_key is not blamed for it.
  CHECK(loadError(head + "    balance: hsh\n    hash_key: path\n").message ==
        "upstreams.app.balance: expected one of round_robin, least_conn, hash, got 'hsh' (did "
        "you mean 'hash'?)");
  CHECK_THAT(loadError("listeners: [{address: 127.0.0.1:8080}]\nupstreams: {app: {servers: "
                       "[{address: \"[::1]:80\"}, {address: \"[0::1]:80\"}]}}\n")
                 .message,
             Catch::Contains("duplicate server '[0::1]:80'"));
  CHECK_THAT(loadError(head + "    retry: {attempts: 6}\n").message,
             Catch::Contains("upstreams.app.retry.attempts: expected an integer 0..5, got '6'"));
  CHECK_THAT(loadError(head + "    retry: {budget_percent: 150}\n").message,
             Catch::Contains("expected a number 0..100, got '150'"));
  CHECK_THAT(loadError(head + "    health_check: {expect_status: 200-99}\n").message,
             Catch::Contains("expected a status or range like 200-399"));
  CHECK_THAT(loadError(head + "    health_check: {path: healthz}\n").message,
             Catch::Contains("must start with '/'"));
  ConfigPtr c = loadOk(head + "    health_check:\n");
  CHECK(c->upstreams[0].health_check.enabled);
  CHECK(c->upstreams[0].health_check.path == "/healthz");
  c = loadOk(head + "    health_check: {expect_status: 204}\n");
  CHECK(c->upstreams[0].health_check.expect_status_min == 204);
  CHECK(c->upstreams[0].health_check.expect_status_max == 204);
  CHECK_THAT(loadError(head + "  app:\n    servers: [{address: 127.0.0.1:9081}]\n").message,
             Catch::Contains("duplicate"));
  CHECK_THAT(loadError(head + "  \"bad name\":\n    servers: [{address: 127.0.0.1:9081}]\n").message,
             Catch::Contains("invalid name 'bad name'"));
  CHECK_THAT(loadError("listeners: [{address: 127.0.0.1:8080}]\nupstreams: {app: {}}\n").message,
             Catch::Contains("upstreams.app: missing required key 'servers'"));
}

TEST_CASE("route shape is validated", "[config]") {
  std::string head = "listeners: [{address: 127.0.0.1:8080}]\nupstreams:\n  app:\n"
                     "    servers: [{address: 127.0.0.1:9080}]\nroutes:\n";
  CHECK_THAT(loadError(head + "  - upstream: app\n").message,
             Catch::Contains("routes[0]: missing required key 'name'"));
  CHECK_THAT(loadError(head + "  - name: r\n").message,
             Catch::Contains("routes[0]: missing 'upstream' (or 'direct_response')"));
  CHECK_THAT(loadError(head + "  - {name: r, upstream: app, direct_response: {status: 200}}\n")
                 .message,
             Catch::Contains("either 'upstream' or 'direct_response', not both"));
  CHECK_THAT(loadError(head + "  - {name: r, direct_response: {status: 600}}\n").message,
             Catch::Contains("direct_response.status: expected an integer 100..599, got '600'"));
  CHECK_THAT(loadError(head + "  - {name: r, direct_response: {body: x}}\n").message,
             Catch::Contains("missing required key 'status'"));
  CHECK_THAT(loadError(head + "  - {name: r, upstream: app, match: {host: \"a b\"}}\n").message,
             Catch::Contains("expected a host name"));
  CHECK_THAT(loadError(head + "  - {name: r, upstream: app, match: {host: \"a.*.com\"}}\n").message,
             Catch::Contains("expected a host name"));
  ConfigPtr c = loadOk(head + "  - {name: r, upstream: app, match: {methods: post}}\n");
  CHECK(c->routes[0].methods == std::vector<std::string>{"POST"});
  c = loadOk(head + "  - {name: r, upstream: app, max_body_size: 0}\n");
  CHECK(c->routes[0].max_body_size == std::optional<uint64_t>(0));
}

TEST_CASE("all errors are collected in one pass, in file order", "[config]") {
  auto errors = loadErrors(R"(workers: lots
listeners:
  - address: 127.0.0.1:8080
    backlog: -1
client:
  header_timeout: 5
  max_body_size: big
trusted_proxies: [300.0.0.1/8]
upstreams:
  app:
    servers: [{address: shop.local:80}]
routes:
  - name: a
    upstream: nope
    match: {path: {regex: "(("}}
  - name: a
    upstream: app
)");
  INFO(joinErrors(errors));
  REQUIRE(errors.size() == 9);
  std::vector<int> lines;
  for (const auto& e : errors) lines.push_back(e.line);
  CHECK(lines == std::vector<int>{1, 4, 6, 7, 8, 11, 14, 15, 16});
  CHECK_THAT(errors[0].message, Catch::StartsWith("workers:"));
  CHECK_THAT(errors[1].message, Catch::StartsWith("listeners[0].backlog:"));
  CHECK_THAT(errors[2].message, Catch::StartsWith("client.header_timeout:"));
  CHECK_THAT(errors[3].message, Catch::StartsWith("client.max_body_size:"));
  CHECK_THAT(errors[4].message, Catch::StartsWith("trusted_proxies[0]:"));
  CHECK_THAT(errors[5].message, Catch::StartsWith("upstreams.app.servers[0].address:"));
  CHECK_THAT(errors[6].message, Catch::StartsWith("routes[0].upstream: unknown upstream 'nope'"));
  CHECK_THAT(errors[7].message, Catch::StartsWith("routes[0].match.path.regex: invalid regex"));
  CHECK_THAT(errors[8].message, Catch::Contains("duplicate route name 'a'"));
}

TEST_CASE("a second YAML document is refused", "[config]") {
  ConfigError e = loadError(std::string(kMinimal) + "---\nworkers: 2\n");
  CHECK_THAT(e.message, Catch::Contains("only one YAML document"));
}

TEST_CASE("loadConfigFile reports an unreadable file without a position", "[config]") {
  ConfigLoadResult r = loadConfigFile("/nonexistent/sluice.yaml");
  REQUIRE_FALSE(r.ok());
  REQUIRE(r.errors.size() == 1);
  CHECK(r.errors[0].line == 0);
  CHECK_THAT(r.errors[0].format(), Catch::StartsWith("/nonexistent/sluice.yaml: cannot open: "));
}

TEST_CASE("loadConfigFile hashes the file and names errors after it", "[config]") {
  ScopedTempCwd cwd;
  cwd.write("a.yaml", "listeners: [{address: 127.0.0.1:8080}]\n");
  cwd.write("b.yaml", "listeners: [{address: 127.0.0.1:8080}]\nbogus: 1\n");
  ConfigLoadResult ok = loadConfigFile("a.yaml");
  REQUIRE(ok.ok());
  CHECK(ok.config->source_path == "a.yaml");
  // printf 'listeners: [{address: 127.0.0.1:8080}]\n' | sha256sum
  CHECK(ok.config->hash == loadConfigString("listeners: [{address: 127.0.0.1:8080}]\n", "x")
                               .config->hash);
  ConfigLoadResult bad = loadConfigFile("b.yaml");
  REQUIRE(bad.errors.size() == 1);
  CHECK(bad.errors[0].format() == "b.yaml:2:1: unknown key 'bogus' in the top level");
}

TEST_CASE("SHA-256 matches a known vector", "[config]") {
  // sha256("listeners: [{address: 127.0.0.1:8080}]") computed with sha256sum.
  ConfigPtr c = loadOk("listeners: [{address: 127.0.0.1:8080}]");
  CHECK(c->hash == "da691ea724aa764782187080cd923473783323d038d88cdf8598aaf8ed5366ce");
}

TEST_CASE("conf/sluice.yaml loads", "[config]") {
  // Its token_file is relative to the working directory, as when `make run` starts sluice.
  ScopedTempCwd cwd;
  cwd.write("conf/admin.token", "test-token\n");
  // ...and so is lua.policies_dir: the shipped policies, as `make run` sees them.
  fs::create_directory_symlink(fs::path(SLUICE_SOURCE_DIR) / "conf/policies", cwd.dir() / "conf/policies");
  std::string path = std::string(SLUICE_SOURCE_DIR) + "/conf/sluice.yaml";
  ConfigLoadResult r = loadConfigFile(path);
  INFO(joinErrors(r.errors));
  REQUIRE(r.ok());
  const Config& c = *r.config;
  CHECK(c.source_path == path);
  CHECK(c.hash.size() == 64);
  CHECK(c.workers >= 1);
  REQUIRE(c.listeners.size() == 1);
  CHECK(c.listeners[0].host == "127.0.0.1");
  CHECK(c.listeners[0].port == 8080);
  CHECK(c.admin.port == 9901);
  CHECK(c.admin.token == "test-token");
  CHECK(c.client.max_body_size == 8 * 1024 * 1024);
  CHECK(c.client.header_timeout == 10 * kSeconds);
  IpAddress loopback;
  REQUIRE(IpAddress::parse("::1", &loopback));
  CHECK(c.trusted_proxies.contains(loopback));
  CHECK(c.trace_start);
  // The storefront, and the three pools the item_page aggregation fans out to (all the demo).
  REQUIRE(c.upstreams.size() == 4);
  const UpstreamConfig& u = c.upstreams[0];
  CHECK(u.name == "storefront");
  REQUIRE(u.servers.size() == 1);
  CHECK(u.servers[0].address() == "127.0.0.1:9080");
  CHECK(u.health_check.enabled);
  CHECK(u.health_check.path == "/healthz");
  CHECK(u.retries == 1);
  CHECK(u.retry_budget_percent == 20.0);
  for (size_t i = 1; i < 4; i++) CHECK(c.upstreams[i].servers[0].address() == "127.0.0.1:9080");
  REQUIRE(c.routes.size() == 4);
  CHECK(c.routes[0].name == "item_page");  // answered by conf/policies/item_page.lua
  CHECK(c.routes[1].name == "checkout");
  CHECK(c.routes[1].path_kind == PathMatchKind::kRegex);
  REQUIRE(c.routes[1].regex != nullptr);
  CHECK(RE2::FullMatch("/api/items/sku-1/checkout", *c.routes[1].regex));
  CHECK(c.routes[1].methods == std::vector<std::string>{"POST"});
  CHECK(c.routes[1].read_timeout == 5 * kSeconds);
  CHECK(c.routes[2].path_kind == PathMatchKind::kPrefix);
  CHECK(c.routes[2].path == "/api/");
  CHECK(c.routes[3].path == "/");
  for (size_t i = 1; i < c.routes.size(); i++) CHECK(c.routes[i].upstream == "storefront");
  CHECK(c.lua != nullptr);
}

TEST_CASE("every YAML config under bench/ loads", "[config]") {
  fs::path bench = fs::path(SLUICE_SOURCE_DIR) / "bench";
  std::vector<fs::path> files;
  if (fs::is_directory(bench)) {
    for (const auto& entry : fs::recursive_directory_iterator(bench)) {
      auto ext = entry.path().extension();
      if (entry.is_regular_file() && (ext == ".yaml" || ext == ".yml")) files.push_back(entry.path());
    }
  }
  if (files.empty()) {
    WARN("no YAML files under bench/, nothing to check");
    return;
  }
  // Relative paths inside (token files, logs) are relative to the repo root, where bench runs.
  fs::path old = fs::current_path();
  fs::current_path(SLUICE_SOURCE_DIR);
  size_t checked = 0;
  for (const auto& f : files) {
    // A template its bench script fills in first (@DIR@ and the like) is checked by that script
    // with `sluice -t` after the substitution, not here.
    std::ifstream in(f);
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    if (RE2::PartialMatch(text, "@[A-Z_]+@")) continue;
    ConfigLoadResult r = loadConfigFile(f.string());
    INFO(f.string() << "\n" << joinErrors(r.errors));
    CHECK(r.ok());
    checked++;
  }
  CHECK(checked > 0);
  fs::current_path(old);
}

}  // namespace
}  // namespace sluice
