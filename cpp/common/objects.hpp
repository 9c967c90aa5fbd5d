// Large objects a job refers to (ex.scatter, large arguments and globals) travel once per process, not once
// per job. A job carries each as a parameter named "@<key>" (the key: 32 hex digits of its content's hash);
// a peer that already has the object gets the parameter as None and fills it in from what it keeps.

#pragma once

#include <dynexec/value.hpp>

#include <string>
#include <string_view>
#include <vector>

namespace dynexec {

inline constexpr char kObjectPrefix = '@'; // a parameter "@<key>" is an object
inline constexpr std::size_t kObjectKeySize = 32;

// The key of parameter `name` if it names an object, else empty.
std::string_view object_key(std::string_view name);
// Whether `key` is one (32 lowercase hex digits); the decoders refuse any other.
bool valid_object_key(std::string_view key);
// The parameters of `params` that are objects, in order.
std::vector<std::string_view> object_keys(const Params& params);

} // namespace dynexec
