#pragma once
// Headers in wire order with their original case. Names and values live in one growing byte
// buffer and fields are offsets into it, so parsing a request head costs one or two allocations
// however many headers it has. Order and case matter: the risk engine fingerprints them.
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace sluice {

class HeaderMap {
 public:
  void clear() {
    buf_.clear();
    fields_.clear();
  }
  // Parser interface: spans may arrive in pieces; a new name starts a new field.
  void appendName(const char* p, size_t n, bool new_field);
  void appendValue(const char* p, size_t n);
  // Ends the last field: drops trailing SP/HT from its value (llhttp passes them on, but OWS is
  // not part of a field value) and returns false if its name is empty (llhttp accepts ": x").
  bool finishField();

  void add(std::string_view name, std::string_view value);
  size_t size() const { return fields_.size(); }
  std::string_view name(size_t i) const {
    const auto& f = fields_[i];
    return {buf_.data() + f.name_off, f.name_len};
  }
  std::string_view value(size_t i) const {
    const auto& f = fields_[i];
    return {buf_.data() + f.value_off, f.value_len};
  }
  bool removed(size_t i) const { return fields_[i].removed; }
  void remove(size_t i) { fields_[i].removed = true; }
  // Removes every field with this name (case-insensitive); returns how many.
  size_t removeAll(std::string_view name);
  // First live field with this name, or nullptr-equivalent empty view with found=false.
  bool get(std::string_view name, std::string_view* value) const;
  std::string_view getOr(std::string_view name, std::string_view dflt = {}) const {
    std::string_view v;
    return get(name, &v) ? v : dflt;
  }
  int count(std::string_view name) const;
  size_t bytes() const { return buf_.size(); }

  // "Name: value\r\n" for every live field.
  void serialize(std::string* out) const;

  // For a pass over every field that wants no per-field bounds or base reloads: field i is
  // fieldData()[i], its name starts at byteData() + name_off. The bytes are NUL-terminated, so
  // byteData()[name_off] is readable even for an empty name. Valid until the next append or add.
  struct Field {
    uint32_t name_off;
    uint32_t name_len;
    uint32_t value_off;
    uint32_t value_len;
    bool removed;
  };
  const Field* fieldData() const { return fields_.data(); }
  const char* byteData() const { return buf_.data(); }

 private:
  std::string buf_;
  std::vector<Field> fields_;
};

}  // namespace sluice
