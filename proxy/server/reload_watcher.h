#pragma once
// Reload on file changes (`reload: {watch: true}`): the control loop watches the directories of
// the config file, the risk list files and the Lua policies (and their subdirectories one level
// down) with inotify through uv_fs_event, and reloads once the writes have been quiet for
// `reload.debounce`. Directories, not files: editors and deploy tools save by writing a
// temporary file and renaming it over the old one, which a watch on the old inode would miss.
// Only the names that matter fire (the config file, list files, *.lua), so the access log
// written next to the config does not. A reload that finds nothing changed is a no-op.
#include <uv.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/clock.h"

namespace sluice {

struct Config;

class ReloadWatcher {
 public:
  ReloadWatcher(uv_loop_t* loop, std::function<void()> reload);
  ~ReloadWatcher();
  ReloadWatcher(const ReloadWatcher&) = delete;
  ReloadWatcher& operator=(const ReloadWatcher&) = delete;

  // Watches what `cfg` names (or nothing, when reload.watch is off); replaces earlier watches.
  void configure(const Config& cfg);
  void stop();
  size_t watchedDirectories() const { return watches_.size(); }

 private:
  struct Watch;
  static void onEvent(uv_fs_event_t* handle, const char* filename, int events, int status);
  static void onTimer(uv_timer_t* timer);
  void clearWatches();
  void addDirectory(const std::string& dir, std::vector<std::string> names, bool lua);

  uv_loop_t* loop_;
  std::function<void()> reload_;
  uv_timer_t* timer_ = nullptr;
  Nanos debounce_ = 500 * kMillis;
  std::vector<Watch*> watches_;
};

}  // namespace sluice
