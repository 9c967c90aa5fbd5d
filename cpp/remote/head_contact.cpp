#include "remote/head_contact.hpp"

namespace dynexec::remote {

LeaseKeeper::LeaseKeeper(const Clock& clock, Duration head_timeout, Duration renew_every)
    : clock_(clock), head_timeout_(head_timeout), renew_every_(renew_every), last_heard_(clock.now()),
      next_renew_(clock.now() + renew_every), hello_at_(clock.now()) {}

void LeaseKeeper::hello_sent() {
    registering_ = true;
    hello_at_ = clock_.now();
}

void LeaseKeeper::heard() { last_heard_ = clock_.now(); }

void LeaseKeeper::welcomed(Duration lease, Duration renew_every) {
    registering_ = false;
    renew_every_ = renew_every;
    next_renew_ = std::min(next_renew_, clock_.now() + renew_every);
    head_timeout_ = std::max(head_timeout_, 3 * lease); // a head may pause for a lease or two
}

bool LeaseKeeper::expired() {
    if (registering_ && clock_.now() - hello_at_ < kHelloRetry) return false;
    hello_sent();
    return true;
}

bool LeaseKeeper::renew_due() {
    auto now = clock_.now();
    if (now < next_renew_) return false;
    next_renew_ = now + renew_every_;
    return true;
}

bool LeaseKeeper::head_silent() const { return silent_for() > head_timeout_; }
Duration LeaseKeeper::silent_for() const { return clock_.now() - last_heard_; }

HeadWatch::HeadWatch(const Clock& clock, Duration patience, Duration grace)
    : clock_(clock), patience_(patience), grace_(grace), last_heard_(clock.now()), last_ping_(clock.now()) {}

void HeadWatch::heard() { last_heard_ = clock_.now(); }

void HeadWatch::connection(bool up) {
    if (up) down_since_.reset();
    else if (!down_since_) down_since_ = clock_.now();
}

bool HeadWatch::ping_due(bool waiting) {
    auto now = clock_.now();
    if (!waiting || now - last_heard_ < patience_ / 4 || now - last_ping_ < patience_ / 4) return false;
    last_ping_ = now;
    return true;
}

std::optional<const char*> HeadWatch::lost(bool waiting) {
    if (!lost_) {
        auto now = clock_.now();
        if (down_since_ && now - *down_since_ >= grace_) lost_ = "its connection closed";
        else if (waiting && now - last_heard_ > patience_) lost_ = "it stopped answering";
        // Silence while nothing is out is no loss: nothing waits, and the next request will say.
        else if (!waiting) last_heard_ = now;
    }
    if (lost_) return lost_;
    return std::nullopt;
}

} // namespace dynexec::remote
