#pragma once
// A PolicyBundle is the Lua half of a generation: every policy/library file with its source
// and content hash, and which policies each route runs with which config. Immutable once
// built; shared by the validator (control thread) and every worker's WorkerVm.
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace sluice::lua {

struct SourceFile {
  std::string name;    // as shown in errors ("item_page.lua"); module name = name minus ".lua"
  std::string source;
  uint64_t hash = 0;   // of the source, so unchanged files are recognised across generations
};

struct PolicyAttachment {
  std::string policy;       // the module's `name`
  std::string config_json;  // the route's config for it, as JSON text ("" = {})
  std::string where;        // where the attachment is written, for errors ("sluice.yaml:42")
};

struct RouteAttachments {
  std::string route;
  std::vector<PolicyAttachment> policies;
};

class PolicyBundle {
 public:
  void addFile(std::string name, std::string source);
  void attach(const std::string& route, PolicyAttachment attachment);

  const std::map<std::string, SourceFile>& files() const { return files_; }
  const std::vector<RouteAttachments>& routes() const { return routes_; }
  // Hash over every file and attachment: equal bundles need no reload.
  uint64_t hash() const;

 private:
  std::map<std::string, SourceFile> files_;
  std::vector<RouteAttachments> routes_;
};
using PolicyBundlePtr = std::shared_ptr<const PolicyBundle>;

// Reads every *.lua file of a directory into a bundle (no attachments). False + *err on I/O error.
bool loadPolicyDirectory(const std::string& dir, PolicyBundle* out, std::string* err);

}  // namespace sluice::lua
