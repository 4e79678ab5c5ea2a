#include "proxy/http/header_map.h"

#include "core/strings.h"

namespace sluice {

void HeaderMap::appendName(const char* p, size_t n, bool new_field) {
  if (new_field || fields_.empty()) {
    uint32_t off = static_cast<uint32_t>(buf_.size());
    fields_.push_back(Field{off, 0, off, 0, false});
  }
  // The name is contiguous in buf_ because values are appended only after the name is done.
  buf_.append(p, n);
  auto& f = fields_.back();
  f.name_len += static_cast<uint32_t>(n);
  f.value_off = static_cast<uint32_t>(buf_.size());
}

void HeaderMap::appendValue(const char* p, size_t n) {
  if (fields_.empty()) return;
  buf_.append(p, n);
  fields_.back().value_len += static_cast<uint32_t>(n);
}

bool HeaderMap::finishField() {
  if (fields_.empty()) return false;
  auto& f = fields_.back();
  while (f.value_len > 0) {
    char c = buf_[f.value_off + f.value_len - 1];
    if (c != ' ' && c != '\t') break;
    f.value_len--;
  }
  return f.name_len > 0;
}

void HeaderMap::add(std::string_view name, std::string_view value) {
  uint32_t noff = static_cast<uint32_t>(buf_.size());
  buf_.append(name);
  uint32_t voff = static_cast<uint32_t>(buf_.size());
  buf_.append(value);
  fields_.push_back(Field{noff, static_cast<uint32_t>(name.size()), voff,
                          static_cast<uint32_t>(value.size()), false});
}

size_t HeaderMap::removeAll(std::string_view n) {
  size_t k = 0;
  for (size_t i = 0; i < fields_.size(); i++) {
    if (!fields_[i].removed && equalsIgnoreCase(name(i), n)) {
      fields_[i].removed = true;
      k++;
    }
  }
  return k;
}

bool HeaderMap::get(std::string_view n, std::string_view* v) const {
  for (size_t i = 0; i < fields_.size(); i++) {
    if (!fields_[i].removed && equalsIgnoreCase(name(i), n)) {
      *v = value(i);
      return true;
    }
  }
  return false;
}

int HeaderMap::count(std::string_view n) const {
  int k = 0;
  for (size_t i = 0; i < fields_.size(); i++)
    if (!fields_[i].removed && equalsIgnoreCase(name(i), n)) k++;
  return k;
}

void HeaderMap::serialize(std::string* out) const {
  for (size_t i = 0; i < fields_.size(); i++) {
    if (fields_[i].removed) continue;
    out->append(name(i));
    out->append(": ", 2);
    out->append(value(i));
    out->append("\r\n", 2);
  }
}

}  // namespace sluice
