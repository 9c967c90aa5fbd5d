// The lease and head-loss logic of the remote loops, on a fake clock.
#include "remote/head_contact.hpp"

#include <gtest/gtest.h>

#include <cmath>

using namespace dynexec;
using namespace dynexec::remote;
using namespace std::chrono_literals;

TEST(LeaseKeeper, RenewsOncePerIntervalAtTheRateTheHeadAsks) {
    FakeClock clock;
    LeaseKeeper k(clock, 10s, 250ms);
    EXPECT_FALSE(k.renew_due());
    clock.advance(250ms);
    EXPECT_TRUE(k.renew_due());
    EXPECT_FALSE(k.renew_due()); // once
    k.welcomed(2s, 100ms);
    clock.advance(100ms);
    EXPECT_TRUE(k.renew_due());
    clock.advance(50ms);
    EXPECT_FALSE(k.renew_due());
}

TEST(LeaseKeeper, ManyExpiredAnswersRegisterOnceUntilTheHelloGoesUnanswered) {
    FakeClock clock;
    LeaseKeeper k(clock, 10s, 250ms);
    k.hello_sent();
    k.welcomed(2s, 500ms);
    // Paused past its lease: every renewal sent before the pause is answered `expired`.
    EXPECT_TRUE(k.expired());  // the first registers again
    EXPECT_FALSE(k.expired()); // the rest do not: one registration per lease
    EXPECT_FALSE(k.expired());
    clock.advance(LeaseKeeper::kHelloRetry + 1ms); // that hello got no welcome: try again
    EXPECT_TRUE(k.expired());
    k.welcomed(2s, 500ms);
    EXPECT_TRUE(k.expired()); // a new lapse of the new lease registers again
}

TEST(LeaseKeeper, AHeadSilentForItsTimeoutIsGivenUpAndAnInfiniteTimeoutNever) {
    FakeClock clock;
    LeaseKeeper k(clock, 10s, 250ms);
    k.welcomed(1s, 250ms);
    clock.advance(9s);
    EXPECT_FALSE(k.head_silent());
    k.heard();
    clock.advance(9s);
    EXPECT_FALSE(k.head_silent());
    clock.advance(2s);
    EXPECT_TRUE(k.head_silent());
    // A short timeout grows to three leases: a head may pause for a lease or two.
    LeaseKeeper brief(clock, 1s, 250ms);
    brief.welcomed(2s, 500ms);
    clock.advance(5s);
    EXPECT_FALSE(brief.head_silent());
    clock.advance(2s);
    EXPECT_TRUE(brief.head_silent());
    LeaseKeeper patient(clock, from_seconds(INFINITY), 250ms);
    patient.welcomed(2s, 500ms);
    clock.advance(24h);
    EXPECT_FALSE(patient.head_silent());
}

TEST(HeadWatch, PingsWhenQuietWhileJobsAreOutAndGivesUpAfterPatience) {
    FakeClock clock;
    HeadWatch w(clock, 4s, 1500ms); // pings after patience/4 = 1 s of quiet
    clock.advance(1500ms);
    EXPECT_FALSE(w.ping_due(false)); // nothing out: no ping
    EXPECT_TRUE(w.ping_due(true));
    EXPECT_FALSE(w.ping_due(true)); // not again at once
    clock.advance(500ms);
    EXPECT_FALSE(w.ping_due(true));
    clock.advance(500ms);
    EXPECT_TRUE(w.ping_due(true));
    w.heard();
    clock.advance(3s);
    EXPECT_FALSE(w.lost(true));
    clock.advance(2s);
    ASSERT_TRUE(w.lost(true));
    EXPECT_STREQ(*w.lost(false), "it stopped answering"); // for good
}

TEST(HeadWatch, SilenceWithNothingOutIsNoLossButAClosedConnectionIs) {
    FakeClock clock;
    HeadWatch w(clock, 4s, 1500ms);
    clock.advance(1h);
    EXPECT_FALSE(w.lost(false));
    EXPECT_FALSE(w.lost(true)); // the silence before anything was out does not count
    w.connection(false);
    clock.advance(1s);
    w.connection(true); // a blip: it came back
    clock.advance(1s);
    EXPECT_FALSE(w.lost(false));
    w.connection(false);
    clock.advance(1500ms);
    ASSERT_TRUE(w.lost(false));
    EXPECT_STREQ(*w.lost(false), "its connection closed");
}
