#include "proxy/server/reload_watcher.h"

#include <dirent.h>

#include <algorithm>

#include "core/log.h"
#include "proxy/config/config.h"
#include "proxy/config/lua_config.h"
#include "proxy/config/risk_settings.h"
#include "risk/risk_config.h"

namespace sluice {

struct ReloadWatcher::Watch {
  uv_fs_event_t handle;
  ReloadWatcher* owner = nullptr;
  std::string dir;
  std::vector<std::string> names;  // file names that matter here
  bool lua = false;                // and every *.lua
};

namespace {

void splitPath(const std::string& path, std::string* dir, std::string* name) {
  size_t slash = path.rfind('/');
  *dir = slash == std::string::npos ? "." : slash == 0 ? "/" : path.substr(0, slash);
  *name = slash == std::string::npos ? path : path.substr(slash + 1);
}

bool endsWith(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

}  // namespace

ReloadWatcher::ReloadWatcher(uv_loop_t* loop, std::function<void()> reload)
    : loop_(loop), reload_(std::move(reload)) {
  timer_ = new uv_timer_t;
  uv_timer_init(loop_, timer_);
  timer_->data = this;
}

ReloadWatcher::~ReloadWatcher() { stop(); }

void ReloadWatcher::stop() {
  clearWatches();
  if (timer_) {
    uv_close(reinterpret_cast<uv_handle_t*>(timer_), [](uv_handle_t* h) { delete reinterpret_cast<uv_timer_t*>(h); });
    timer_ = nullptr;
  }
}

void ReloadWatcher::clearWatches() {
  for (Watch* w : watches_) {
    uv_fs_event_stop(&w->handle);
    uv_close(reinterpret_cast<uv_handle_t*>(&w->handle), [](uv_handle_t* h) {
      delete static_cast<Watch*>(h->data);
    });
  }
  watches_.clear();
}

void ReloadWatcher::addDirectory(const std::string& dir, std::vector<std::string> names, bool lua) {
  for (Watch* w : watches_) {
    if (w->dir != dir) continue;  // one watch per directory, the names merged
    for (auto& n : names)
      if (std::find(w->names.begin(), w->names.end(), n) == w->names.end()) w->names.push_back(n);
    w->lua = w->lua || lua;
    return;
  }
  auto* w = new Watch;
  w->owner = this;
  w->dir = dir;
  w->names = std::move(names);
  w->lua = lua;
  w->handle.data = w;
  uv_fs_event_init(loop_, &w->handle);
  int rc = uv_fs_event_start(&w->handle, &ReloadWatcher::onEvent, dir.c_str(), 0);
  if (rc != 0) {
    LOG_WARN("reload.watch: cannot watch %s: %s", dir.c_str(), uv_strerror(rc));
    uv_close(reinterpret_cast<uv_handle_t*>(&w->handle), [](uv_handle_t* h) { delete static_cast<Watch*>(h->data); });
    return;
  }
  watches_.push_back(w);
}

void ReloadWatcher::configure(const Config& cfg) {
  clearWatches();
  if (!cfg.reload_watch || !timer_) return;
  debounce_ = cfg.reload_debounce;
  std::string dir, name;
  splitPath(cfg.source_path, &dir, &name);
  addDirectory(dir, {name}, false);
  if (cfg.risk && cfg.risk->policy) {
    for (const auto& src : cfg.risk->policy->config.lists) {
      splitPath(src.file, &dir, &name);
      addDirectory(dir, {name}, false);
    }
  }
  if (cfg.lua && !cfg.lua->policies_dir.empty()) {
    const std::string& root = cfg.lua->policies_dir;
    addDirectory(root, {}, true);
    // require("lib.x") modules live one level down; inotify does not recurse.
    if (DIR* d = opendir(root.c_str())) {
      while (dirent* e = readdir(d)) {
        if (e->d_name[0] == '.' || e->d_type != DT_DIR) continue;
        addDirectory(root + "/" + e->d_name, {}, true);
      }
      closedir(d);
    }
  }
  LOG_INFO("reload.watch: watching %zu directories (debounce %lld ms)", watches_.size(),
           static_cast<long long>(debounce_ / kMillis));
}

void ReloadWatcher::onEvent(uv_fs_event_t* handle, const char* filename, int, int status) {
  auto* w = static_cast<Watch*>(handle->data);
  if (status != 0 || !filename || !w->owner->timer_) return;
  const std::string_view f(filename);
  const bool matters = (w->lua && endsWith(f, ".lua")) ||
                       std::find(w->names.begin(), w->names.end(), f) != w->names.end();
  if (!matters) return;
  // Every change restarts the quiet period: one reload for a burst of writes.
  uv_timer_start(w->owner->timer_, &ReloadWatcher::onTimer, static_cast<uint64_t>(w->owner->debounce_ / kMillis), 0);
}

void ReloadWatcher::onTimer(uv_timer_t* timer) {
  auto* self = static_cast<ReloadWatcher*>(timer->data);
  LOG_INFO("reload.watch: files changed, reloading");
  self->reload_();
}

}  // namespace sluice
