#include "lua/policy_bundle.h"

#include <filesystem>
#include <fstream>
#include <iterator>

#include "core/hash.h"

namespace sluice::lua {

void PolicyBundle::addFile(std::string name, std::string source) {
  SourceFile f;
  f.hash = hash64(source);
  f.name = name;
  f.source = std::move(source);
  files_[std::move(name)] = std::move(f);
}

void PolicyBundle::attach(const std::string& route, PolicyAttachment attachment) {
  for (auto& r : routes_) {
    if (r.route == route) {
      r.policies.push_back(std::move(attachment));
      return;
    }
  }
  routes_.push_back(RouteAttachments{route, {std::move(attachment)}});
}

uint64_t PolicyBundle::hash() const {
  uint64_t h = 0x5eed;
  for (const auto& [name, f] : files_) h = hash64(name, h ^ f.hash);
  for (const auto& r : routes_) {
    h = hash64(r.route, h);
    for (const auto& a : r.policies) h = hash64(a.config_json, hash64(a.policy, h));
  }
  return h;
}

bool loadPolicyDirectory(const std::string& dir, PolicyBundle* out, std::string* err) {
  std::error_code ec;
  std::filesystem::directory_iterator it(dir, ec);
  if (ec) {
    *err = dir + ": " + ec.message();
    return false;
  }
  for (const auto& e : it) {
    if (!e.is_regular_file() || e.path().extension() != ".lua") continue;
    std::ifstream in(e.path(), std::ios::binary);
    if (!in) {
      *err = e.path().string() + ": cannot read";
      return false;
    }
    std::string src((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    out->addFile(e.path().filename().string(), std::move(src));
  }
  return true;
}

}  // namespace sluice::lua
