#include "common/objects.hpp"

namespace dynexec {

bool valid_object_key(std::string_view key) {
    if (key.size() != kObjectKeySize) return false;
    for (char c : key)
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
    return true;
}

std::string_view object_key(std::string_view name) {
    if (name.empty() || name[0] != kObjectPrefix) return {};
    return name.substr(1);
}

std::vector<std::string_view> object_keys(const Params& params) {
    std::vector<std::string_view> keys;
    for (auto& [name, v] : params)
        if (auto k = object_key(name); !k.empty()) keys.push_back(k);
    return keys;
}

} // namespace dynexec
