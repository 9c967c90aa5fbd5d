#include "archive/hdf5.hpp"
#include "archive/results_archive.hpp"
#include "archive/results_finder.hpp"
#include "archive/results_manager.hpp"
#include "common/turn.hpp"
#include "testing/fakes.hpp"

#include <fmt/format.h>
#include <gtest/gtest.h>

#include <array>

#include <sys/mount.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <fstream>
#include <future>
#include <mutex>
#include <thread>

namespace dynexec {
namespace {
namespace fs = std::filesystem;
using namespace std::string_literals;
using testing::ok_result;

// A directory of its own for each test, removed afterwards.
class ArchiveTest : public ::testing::Test {
protected:
    void SetUp() override {
        static std::atomic<int> n{0};
        dir = fs::temp_directory_path() / ("dynexec-archive-test-" + std::to_string(::getpid()) + "-" + std::to_string(n++));
        fs::remove_all(dir);
    }
    void TearDown() override { fs::remove_all(dir); }

    fs::path dir;
    JobIdGenerator ids;
};

template <class T> Array make_array(std::vector<std::int64_t> shape, std::vector<T> values) {
    auto [a, span] = Array::allocate<T>(std::move(shape));
    EXPECT_EQ(span.size(), values.size());
    std::copy(values.begin(), values.end(), span.begin());
    return a;
}

// Value has no operator== (Array compares by content here).
void expect_same(const Value& got, const Value& want) {
    ASSERT_EQ(got.index(), want.index());
    if (auto* a = std::get_if<Array>(&want)) {
        auto& g = std::get<Array>(got);
        EXPECT_EQ(g.dtype, a->dtype);
        EXPECT_EQ(g.shape, a->shape);
        ASSERT_EQ(g.nbytes, a->nbytes);
        EXPECT_TRUE(g.nbytes == 0 || std::memcmp(g.data, a->data, a->nbytes) == 0);
        EXPECT_TRUE(g.owner);
        EXPECT_NE(g.data, a->data); // a fresh buffer, owned by the result
    } else {
        std::visit(
            [&](const auto& w) {
                using T = std::decay_t<decltype(w)>;
                if constexpr (!std::is_same_v<T, Array>) {
                    EXPECT_TRUE(std::get<T>(got) == w) << type_name(want);
                }
            },
            want);
    }
}

TEST_F(ArchiveTest, RoundTripsEveryValueKind) {
    std::vector<Value> values = {
        std::monostate{},
        true,
        false,
        std::int64_t{-1234567890123},
        3.141592653589793,
        std::string("héllo, wörld ✓"),
        std::string(),
        Bytes{"a\0b\xff"s},
        Bytes{},
        Pickled{"\x80\x04\x95\x00pickle\0data"s},
        make_array<double>({2, 3}, {1.5, -2.5, 3.25, 4, 5, 6}),
        make_array<std::int32_t>({4}, {-7, 0, 7, 2147483647}),
        make_array<bool>({3}, {true, false, true}),
        make_array<float>({1, 2}, {0.5f, -0.25f}),
        make_array<std::uint8_t>({2, 2}, {0, 1, 254, 255}),
        make_array<std::int64_t>({}, {42}),   // 0-d
        make_array<double>({0, 5}, {}),       // empty
        make_array<std::uint64_t>({100000}, std::vector<std::uint64_t>(100000, 7)), // contiguous, not compact
    };
    std::vector<Result> batch;
    for (auto& v : values) batch.push_back(ok_result(ids.next(), v));

    ResultsArchive archive(dir, ids.session());
    archive.write(batch);
    archive.flush();
    EXPECT_EQ(archive.count(), values.size());
    for (std::size_t i = 0; i < batch.size(); ++i) {
        SCOPED_TRACE(i);
        auto r = archive.read(batch[i].job_id);
        ASSERT_TRUE(r);
        expect_same(r->value, values[i]);
        EXPECT_EQ(r->owner, "alice");
        EXPECT_EQ(r->end_time, 1700000002.75);
    }
}

TEST_F(ArchiveTest, KeepsErrorFields) {
    Result r;
    r.job_id = ids.next();
    r.status = Status::error;
    r.value = Pickled{"exc"};
    r.error_type = "ValueError";
    r.message = "x must be positive, got -1";
    r.traceback = "Traceback (most recent call last):\n  File \"job.py\", line 3, in f\nValueError: ünïcode";
    r.owner = "bob";
    r.service = "pricing";
    r.server = "node7-server-2";
    r.submit_time = 1.0;
    r.start_time = 2.0;
    r.end_time = 3.5;
    r.attempts = 3;
    Job job;
    job.id = ids.next();
    job.service = "svc";
    Result lost = result_without_run(job, Status::lost, "dynexec.ServerLost", "gone");

    ResultsArchive archive(dir, ids.session());
    archive.write({r, lost});
    auto got = archive.read(r.job_id);
    ASSERT_TRUE(got);
    EXPECT_EQ(got->status, Status::error);
    EXPECT_EQ(got->error_type, r.error_type);
    EXPECT_EQ(got->message, r.message);
    EXPECT_EQ(got->traceback, r.traceback);
    EXPECT_EQ(got->owner, r.owner);
    EXPECT_EQ(got->service, r.service);
    EXPECT_EQ(got->server, r.server);
    EXPECT_EQ(got->submit_time, 1.0);
    EXPECT_EQ(got->start_time, 2.0);
    EXPECT_EQ(got->end_time, 3.5);
    EXPECT_EQ(got->attempts, 3);
    expect_same(got->value, r.value);

    auto got_lost = archive.read(lost.job_id);
    ASSERT_TRUE(got_lost);
    EXPECT_EQ(got_lost->status, Status::lost);
    EXPECT_EQ(got_lost->error_type, "dynexec.ServerLost");
    EXPECT_TRUE(std::holds_alternative<std::monostate>(got_lost->value));
}

TEST_F(ArchiveTest, LocationNamesAbsoluteFileAndRow) {
    ResultsArchive archive(dir / "sub" / ".." / "sub" / "", ids.session());
    JobId first = ids.next();
    JobId id = ids.next();
    std::string file = (dir / "sub").string() + "/" + ids.session() + ".h5";
    EXPECT_EQ(archive.location_of(id), file + ":/results"); // not archived yet: no row
    EXPECT_EQ(archive.file(), dir / "sub" / (ids.session() + ".h5"));
    archive.write({ok_result(id, 1.0)});
    archive.write({ok_result(first, 2.0)});
    // Rows come in the order results are written, whatever their job IDs.
    EXPECT_EQ(archive.location_of(id), file + ":/results[0]");
    EXPECT_EQ(archive.read(first)->location, file + ":/results[1]");
    EXPECT_EQ(ResultsArchive::read_from(dir / "sub", id)->location, file + ":/results[0]");
}

TEST_F(ArchiveTest, ReadsBackAfterCloseAndReopen) {
    JobId a = ids.next(), b = ids.next();
    {
        ResultsArchive archive(dir, ids.session());
        archive.write({ok_result(a, make_array<double>({2, 2}, {1, 2, 3, 4}))});
        archive.close();
        archive.close(); // idempotent
        EXPECT_THROW(archive.read(a), ArchiveError);
    }
    // A later process: first a reader, then the session reopened for writing.
    auto r = ResultsArchive::read_from(dir, a);
    ASSERT_TRUE(r);
    expect_same(r->value, make_array<double>({2, 2}, {1, 2, 3, 4}));

    ResultsArchive reopened(dir, ids.session());
    EXPECT_EQ(reopened.count(), 1u);
    EXPECT_TRUE(reopened.contains(a));
    reopened.write({ok_result(b, std::string("second"))});
    reopened.close();
    EXPECT_EQ(std::get<std::string>(ResultsArchive::read_from(dir, b)->value), "second");
}

TEST_F(ArchiveTest, RecreatesAnEmptyLeftoverFile) {
    fs::create_directories(dir);
    std::ofstream(dir / (ids.session() + ".h5")).flush(); // a crash between creating the file and formatting it
    ResultsArchive archive(dir, ids.session());
    EXPECT_EQ(archive.count(), 0u);
}

TEST_F(ArchiveTest, DuplicateIsRejectedAndTheRestWritten) {
    JobId a = ids.next(), b = ids.next(), c = ids.next();
    ResultsArchive archive(dir, ids.session());
    archive.write({ok_result(a, std::int64_t{1})});
    try {
        archive.write({ok_result(b, std::int64_t{2}), ok_result(a, std::int64_t{99}), ok_result(c, std::int64_t{3}),
                       ok_result(c, std::int64_t{4})});
        FAIL() << "expected ArchiveWriteError";
    } catch (const ArchiveWriteError& e) {
        EXPECT_EQ(e.failed, (std::vector<JobId>{a, c}));
        EXPECT_NE(std::string(e.what()).find("job " + a + " is already archived"), std::string::npos) << e.what();
    }
    EXPECT_EQ(archive.count(), 3u);
    EXPECT_EQ(std::get<std::int64_t>(archive.read(a)->value), 1); // never overwritten
    EXPECT_EQ(std::get<std::int64_t>(archive.read(b)->value), 2);
    EXPECT_EQ(std::get<std::int64_t>(archive.read(c)->value), 3);
}

TEST_F(ArchiveTest, BadValueIsRejectedWithoutAHalfWrittenRow) {
    Array bad = make_array<double>({3}, {1, 2, 3});
    bad.nbytes = 8; // shape says 24
    JobId a = ids.next(), b = ids.next();
    ResultsArchive archive(dir, ids.session());
    EXPECT_THROW(archive.write({ok_result(a, bad), ok_result(b, true)}), ArchiveWriteError);
    EXPECT_FALSE(archive.contains(a));
    EXPECT_TRUE(archive.contains(b));
    EXPECT_EQ(archive.count(), 1u);
    EXPECT_FALSE(archive.read(a));
    archive.write({ok_result(a, 2.5)}); // nothing of the failed attempt is in the way
    EXPECT_EQ(std::get<double>(archive.read(a)->value), 2.5);
}

TEST_F(ArchiveTest, UnwritablePathThrowsNamingIt) {
    try {
        ResultsArchive archive("/proc/dynexec-test/x", ids.session());
        FAIL() << "expected ArchiveError";
    } catch (const ArchiveError& e) {
        std::string what = e.what();
        EXPECT_NE(what.find("cannot create results archive directory '/proc/dynexec-test"), std::string::npos) << what;
    }
    // The directory is fine but the file cannot be created: something else is there.
    fs::create_directories(dir / (ids.session() + ".h5"));
    try {
        ResultsArchive archive(dir, ids.session());
        FAIL() << "expected ArchiveError";
    } catch (const ArchiveError& e) {
        std::string what = e.what();
        EXPECT_NE(what.find((dir / (ids.session() + ".h5")).string()), std::string::npos) << what;
    }
    std::ofstream(dir / "a-file") << "a regular file";
    EXPECT_THROW(ResultsManager(dir / "a-file" / "below", ids.session(), nullptr), ArchiveError)
        << "a manager opens its archive at once";
}

TEST_F(ArchiveTest, ReadFromMissingOrCorrupt) {
    JobId id = ids.next();
    EXPECT_FALSE(ResultsArchive::read_from(dir, id)); // no directory
    { ResultsArchive archive(dir, ids.session()); }
    EXPECT_FALSE(ResultsArchive::read_from(dir, id)); // no such job
    std::ofstream(dir / (ids.session() + ".h5"), std::ios::trunc) << "not an HDF5 file";
    EXPECT_THROW(ResultsArchive::read_from(dir, id), ArchiveError);
    EXPECT_THROW(ResultsArchive::read_from(dir, "not-a-job-id"), InvalidJob);
}

JobId id_at(const std::string& session, std::uint64_t seq) { return fmt::format("{}-{:010}", session, seq); }

TEST_F(ArchiveTest, SequenceOfJobIds) {
    EXPECT_EQ(JobIdGenerator::sequence_of(ids.next()), 1u);
    EXPECT_EQ(JobIdGenerator::sequence_of(ids.next()), 2u);
    EXPECT_EQ(JobIdGenerator::sequence_of(id_at(ids.session(), 9999999999)), 9999999999u);
    EXPECT_THROW(JobIdGenerator::sequence_of(id_at(ids.session(), 0)), InvalidJob);
    EXPECT_THROW(JobIdGenerator::sequence_of(ids.session() + "-12"), InvalidJob);
    EXPECT_THROW(JobIdGenerator::sequence_of("x"), InvalidJob);
}

TEST_F(ArchiveTest, IdsOfAnotherSessionOrNoIdAreRejected) {
    JobIdGenerator other;
    JobId mine = ids.next(), theirs = other.next();
    ResultsArchive archive(dir, ids.session());
    try {
        archive.write({ok_result(theirs, 1.0), ok_result(mine, 2.0), ok_result("not-a-job", 3.0)});
        FAIL() << "expected ArchiveWriteError";
    } catch (const ArchiveWriteError& e) {
        EXPECT_EQ(e.failed, (std::vector<JobId>{theirs, "not-a-job"}));
        std::string what = e.what();
        EXPECT_NE(what.find("job " + theirs + " is not of session " + ids.session()), std::string::npos) << what;
        EXPECT_NE(what.find("'not-a-job' is not a dynexec job ID"), std::string::npos) << what;
    }
    EXPECT_EQ(archive.count(), 1u);
    for (auto id : {theirs, "not-a-job"s, id_at(ids.session(), 0)}) {
        SCOPED_TRACE(id);
        EXPECT_THROW(archive.read(id), InvalidJob);
        EXPECT_THROW(archive.contains(id), InvalidJob);
        EXPECT_THROW(archive.location_of(id), InvalidJob);
    }
    try {
        archive.read(theirs);
    } catch (const InvalidJob& e) {
        std::string what = e.what();
        EXPECT_NE(what.find(theirs), std::string::npos) << what;
        EXPECT_NE(what.find(archive.file().string()), std::string::npos) << what;
    }
    EXPECT_THROW(ResultsArchive::read_from(dir, id_at(ids.session(), 0)), InvalidJob);
    EXPECT_THROW(ResultsArchive(dir, "not-a-session"), ArchiveError);
}

TEST_F(ArchiveTest, SparseRowsInAnyOrder) {
    const std::string s = ids.session();
    std::vector<std::uint64_t> first = {5, 2, 9, 100, 3000, 7};
    std::vector<Result> batch;
    for (auto seq : first) batch.push_back(ok_result(id_at(s, seq), std::int64_t(seq)));
    {
        ResultsArchive archive(dir, s);
        archive.write(batch);
        EXPECT_EQ(archive.count(), first.size());
        for (auto seq : first) EXPECT_EQ(std::get<std::int64_t>(archive.read(id_at(s, seq))->value), std::int64_t(seq));
        for (std::uint64_t seq : {1, 3, 4, 6, 8, 99, 101, 2999, 3001, 5000}) {
            EXPECT_FALSE(archive.read(id_at(s, seq))) << seq;
            EXPECT_FALSE(archive.contains(id_at(s, seq))) << seq;
        }
        // The gaps, later and out of order: no row of the first batch is touched.
        archive.write({ok_result(id_at(s, 8), std::int64_t{8}), ok_result(id_at(s, 1), std::int64_t{1}),
                       ok_result(id_at(s, 6), std::int64_t{6})});
    }
    EXPECT_FALSE(ResultsArchive::read_from(dir, id_at(s, 4)));
    EXPECT_FALSE(ResultsArchive::read_from(dir, id_at(s, 5000))); // past the last row
    ResultsArchive reopened(dir, s);
    EXPECT_EQ(reopened.count(), first.size() + 3);
    for (std::uint64_t seq : {1, 2, 5, 6, 7, 8, 9, 100, 3000}) {
        SCOPED_TRACE(seq);
        EXPECT_TRUE(reopened.contains(id_at(s, seq)));
        EXPECT_EQ(std::get<std::int64_t>(ResultsArchive::read_from(dir, id_at(s, seq))->value), std::int64_t(seq));
    }
    EXPECT_FALSE(reopened.contains(id_at(s, 3)));
}

TEST_F(ArchiveTest, BatchSpanningChunks) {
    const std::string s = ids.session();
    std::vector<Result> batch;
    for (std::uint64_t seq = 1000; seq < 4200; ++seq) {
        Result r = ok_result(id_at(s, seq), std::string(seq % 7, 'x') + std::to_string(seq));
        r.server = "server-" + std::to_string(seq % 3); // interned
        r.message = seq % 2 ? "" : "m" + std::to_string(seq);
        batch.push_back(std::move(r));
    }
    std::swap(batch[0], batch[2000]); // not in order
    ResultsArchive archive(dir, s);
    archive.write(batch);
    archive.write({ok_result(id_at(s, 1), std::int64_t{1})});
    EXPECT_EQ(archive.count(), batch.size() + 1);
    archive.close();
    for (std::uint64_t seq : {1000, 1023, 1024, 1025, 2047, 2048, 3071, 3072, 4199}) {
        SCOPED_TRACE(seq);
        auto r = ResultsArchive::read_from(dir, id_at(s, seq));
        ASSERT_TRUE(r);
        EXPECT_EQ(std::get<std::string>(r->value), std::string(seq % 7, 'x') + std::to_string(seq));
        EXPECT_EQ(r->server, "server-" + std::to_string(seq % 3));
        EXPECT_EQ(r->message, seq % 2 ? "" : "m" + std::to_string(seq));
        EXPECT_EQ(r->owner, "alice");
    }
    EXPECT_FALSE(ResultsArchive::read_from(dir, id_at(s, 999)));
    EXPECT_EQ(std::get<std::int64_t>(ResultsArchive::read_from(dir, id_at(s, 1))->value), 1);
}

TEST_F(ArchiveTest, ReopenThenAppend) {
    std::vector<JobId> before;
    {
        ResultsArchive archive(dir, ids.session());
        for (int b = 0; b < 3; ++b) {
            std::vector<Result> batch;
            for (int i = 0; i < 700; ++i) batch.push_back(ok_result(ids.next(), std::int64_t(before.size() + i)));
            for (auto& r : batch) before.push_back(r.job_id);
            archive.write(batch);
        }
    } // closed by the destructor
    ResultsArchive archive(dir, ids.session());
    EXPECT_EQ(archive.count(), before.size());
    JobId next = ids.next();
    try {
        archive.write({ok_result(before[5], std::int64_t{-1}), ok_result(next, std::string("after"))});
        FAIL() << "expected ArchiveWriteError";
    } catch (const ArchiveWriteError& e) {
        EXPECT_EQ(e.failed, std::vector<JobId>{before[5]});
    }
    EXPECT_EQ(std::get<std::int64_t>(archive.read(before[5])->value), 5);
    EXPECT_EQ(std::get<std::int64_t>(archive.read(before.back())->value), std::int64_t(before.size() - 1));
    auto r = archive.read(next);
    ASSERT_TRUE(r);
    EXPECT_EQ(std::get<std::string>(r->value), "after");
    EXPECT_EQ(r->owner, "alice"); // interned before the reopen, written again after
    EXPECT_EQ(r->server, "server-1");
    EXPECT_EQ(archive.count(), before.size() + 1);
}

// The rows of a repeated text refer to one stored copy of it; texts of their own are each stored once.
TEST_F(ArchiveTest, RowsShareTheStorageOfRepeatedTexts) {
    auto texts_stored = [&](const fs::path& file) {
        h5::PList fapl = h5::file_access();
        h5::File f = h5::open_file(file.string(), false, fapl.id());
        h5::Dataset texts = h5::open_dataset(f.id(), "texts");
        h5::Space space = h5::dataset_space(texts.id());
        return h5::dims(space.id()).at(0);
    };
    std::vector<JobId> jobs;
    auto batch_of = [&](int n, int first) {
        std::vector<Result> batch;
        for (int i = 0; i < n; ++i) {
            jobs.push_back(ids.next());
            Result r = ok_result(jobs.back(), std::int64_t(first + i));
            r.message = i % 2 ? "" : fmt::format("note {}", first + i); // a text of its own, or none
            r.server = i % 2 ? "server-1" : "server-2";                 // two texts, in turn
            batch.push_back(std::move(r));
        }
        return batch;
    };
    fs::path file;
    {
        ResultsArchive archive(dir, ids.session());
        file = archive.file();
        archive.write(batch_of(101, 0));  // a chunk and a part
        archive.write(batch_of(7, 101));  // into the same chunk
        archive.write(batch_of(1, 108));
        archive.close();
    }
    // owner, service, two servers, once; a message for every other job.
    EXPECT_EQ(texts_stored(file), 4u + 51u + 4u + 1u);
    {
        ResultsArchive archive(dir, ids.session()); // reopened: the texts are written again once
        archive.write(batch_of(30, 109));
    }
    EXPECT_EQ(texts_stored(file), 60u + 4u + 15u);
    for (std::size_t i = 0; i < jobs.size(); ++i) {
        SCOPED_TRACE(jobs[i]);
        auto r = ResultsArchive::read_from(dir, jobs[i]);
        ASSERT_TRUE(r);
        EXPECT_EQ(std::get<std::int64_t>(r->value), std::int64_t(i));
        EXPECT_EQ(r->owner, "alice");
        EXPECT_EQ(r->service, "python");
        bool odd = (i < 101 ? i : i < 108 ? i - 101 : i < 109 ? 0 : i - 109) % 2;
        EXPECT_EQ(r->server, odd ? "server-1" : "server-2");
        EXPECT_EQ(r->message, odd ? "" : fmt::format("note {}", i));
    }
    EXPECT_TRUE(ResultsArchive::damaged_rows(file).empty());
}

TEST_F(ArchiveTest, LargeValuesHaveDatasetsOfTheirOwn) {
    std::vector<std::int16_t> ints(40 * 30 * 50);
    for (std::size_t i = 0; i < ints.size(); ++i) ints[i] = std::int16_t(i * 7);
    std::vector<bool> bits(100000);
    for (std::size_t i = 0; i < bits.size(); ++i) bits[i] = i % 3 == 0;
    std::vector<Value> values = {
        make_array<double>({1 << 20}, std::vector<double>(1 << 20, 0.5)), // 8 MiB
        make_array<std::int16_t>({40, 30, 50}, ints),
        make_array<bool>({100000}, std::vector<bool>(bits.begin(), bits.end())),
        make_array<float>({1, 1, 1, 1, 1, 1, 1, 1, 1, 2}, {1.5f, 2.5f}), // more dimensions than a row holds
        std::string(100000, 'z'),
        Bytes{std::string(70000, '\xfe')},
        Pickled{std::string(200000, '\x80')},
        make_array<double>({8192}, std::vector<double>(8192, 1.0)), // 64 KiB: a dataset too, as every array
    };
    std::vector<Result> batch;
    for (auto& v : values) batch.push_back(ok_result(ids.next(), v));
    {
        ResultsArchive archive(dir, ids.session());
        archive.write(batch);
        for (std::size_t i = 0; i < batch.size(); ++i) {
            SCOPED_TRACE(i);
            expect_same(archive.read(batch[i].job_id)->value, values[i]);
        }
    }
    for (std::size_t i = 0; i < batch.size(); ++i) {
        SCOPED_TRACE(i);
        auto r = ResultsArchive::read_from(dir, batch[i].job_id);
        ASSERT_TRUE(r);
        expect_same(r->value, values[i]);
    }
    // Plain datasets with the array's dtype and shape.
    h5::PList fapl = h5::file_access();
    h5::File f = h5::open_file((dir / (ids.session() + ".h5")).string(), false, fapl.id());
    h5::Dataset ints_ds = h5::open_dataset(f.id(), "values/" + batch[1].job_id);
    h5::Space space = h5::dataset_space(ints_ds.id());
    EXPECT_EQ(h5::dims(space.id()), (std::vector<hsize_t>{40, 30, 50}));
    h5::Type type = h5::dataset_type(ints_ds.id());
    EXPECT_EQ(h5::type_class(type.id()), H5T_INTEGER);
    EXPECT_EQ(h5::type_size(type.id()), 2u);
    EXPECT_TRUE(h5::exists(f.id(), "values/" + batch.back().job_id));
}

TEST_F(ArchiveTest, ALeftoverValueDatasetIsReplaced) {
    JobId id = ids.next();
    { ResultsArchive archive(dir, ids.session()); }
    {
        // As a crash between writing the value and its row would leave it.
        h5::PList fapl = h5::file_access();
        h5::File f = h5::open_file((dir / (ids.session() + ".h5")).string(), true, fapl.id());
        hsize_t n = 3;
        h5::Space space = h5::simple_space(std::span(&n, 1));
        h5::PList dcpl = h5::contiguous_creation();
        h5::create_dataset(f.id(), "values/" + id, H5T_NATIVE_UINT8, space.id(), dcpl.id());
    }
    ResultsArchive archive(dir, ids.session());
    EXPECT_FALSE(archive.contains(id));
    Array big = make_array<double>({100000}, std::vector<double>(100000, 3.0));
    archive.write({ok_result(id, big)});
    expect_same(archive.read(id)->value, big);
}

// Rows are the results written, in order: sparse job IDs (each client reserves a block) leave no empty rows.
TEST_F(ArchiveTest, RowsAreTheResultsWrittenWithTheirJobIds) {
    const std::string s = ids.session();
    {
        ResultsArchive archive(dir, s);
        archive.write({ok_result(id_at(s, 65548), std::int64_t{1}), ok_result(id_at(s, 3), std::int64_t{2})});
        archive.write({ok_result(id_at(s, 1), std::int64_t{3})});
    }
    h5::PList fapl = h5::file_access();
    h5::File f = h5::open_file((dir / (s + ".h5")).string(), false, fapl.id());
    h5::Dataset results = h5::open_dataset(f.id(), "results");
    h5::Space space = h5::dataset_space(results.id());
    EXPECT_EQ(h5::dims(space.id()), (std::vector<hsize_t>{3}));
    // The job_id column, read on its own as any HDF5 reader would.
    h5::Type str = h5::utf8_string_type();
    h5::Type id_type = h5::short_text_type(28); // a job ID's 27 characters and a NUL
    h5::Type only_id = h5::compound_type(28);
    h5::insert_member(only_id.id(), "job_id", 0, id_type.id());
    std::vector<std::array<char, 28>> got(3);
    h5::read(results.id(), only_id.id(), got.data());
    std::vector<std::string> job_ids;
    for (auto& p : got) job_ids.emplace_back(p.data());
    EXPECT_EQ(job_ids, (std::vector<std::string>{id_at(s, 65548), id_at(s, 3), id_at(s, 1)}));
    EXPECT_EQ(h5::int_attribute(f.id(), "version"), 5);
    EXPECT_NE(h5::string_attribute(results.id(), "time_unit", str.id()).find("seconds since 1970-01-01"), std::string::npos);
}

// The summary column is 96 bytes: a longer summary is cut where a character starts, and says so.
TEST_F(ArchiveTest, ALongSummaryIsCutToItsColumn) {
    std::string long_summary = "run(";
    for (int i = 0; i < 60; ++i) long_summary += "é";   // 2 bytes each
    Result r = ok_result(ids.next(), std::int64_t{4});
    r.info = std::make_shared<JobInfo>(JobInfo{"sweep.run", "", long_summary + ")", "", ""});
    Result nul = ok_result(ids.next(), std::int64_t{5});
    nul.info = std::make_shared<JobInfo>(JobInfo{"sweep.run", "", std::string("f(\0x)", 5), "", ""});
    {
        ResultsArchive archive(dir, ids.session());
        archive.write({r, nul});
    }
    std::string got = ResultsArchive::read_from(dir, r.job_id)->info->summary;
    EXPECT_EQ(got.size(), 4u + 2 * 44 + 3) << got;                // 95 bytes at most, "..." included
    EXPECT_EQ(got, long_summary.substr(0, 4 + 2 * 44) + "...");  // whole characters only
    EXPECT_EQ(ResultsArchive::read_from(dir, nul.job_id)->info->summary, "f(");
}

TEST_F(ArchiveTest, KeepsWhatEachJobWasAndTheSession) {
    Result r = ok_result(ids.next(), std::int64_t{4});
    r.info = std::make_shared<JobInfo>(JobInfo{"sweep.run", R"({"args": [0.5], "kwargs": {}})", "run(0.5)", "sweep-3",
                                               R"(["calib", "x"])"});
    Result bare = ok_result(ids.next(), 1.5); // no description: empty texts
    {
        ResultsArchive archive(dir, ids.session());
        archive.set_info({{"script", "/home/a/sweep.py"}, {"label", "night run"}});
        archive.set_info({{"label", "night run 2"}}); // replaced
        EXPECT_THROW(archive.set_info({{"version", "9"}}), ArchiveError);
        archive.write({r, bare});
    }
    auto got = ResultsArchive::read_from(dir, r.job_id);
    ASSERT_TRUE(got && got->info);
    EXPECT_EQ(got->info->function, "sweep.run");
    EXPECT_EQ(got->info->args, r.info->args);
    EXPECT_EQ(got->info->summary, "run(0.5)");
    EXPECT_EQ(got->info->label, "sweep-3");
    EXPECT_EQ(got->info->tags, R"(["calib", "x"])");
    auto got_bare = ResultsArchive::read_from(dir, bare.job_id);
    ASSERT_TRUE(got_bare && got_bare->info);
    EXPECT_EQ(got_bare->info->label, "");
    h5::PList fapl = h5::file_access();
    h5::File f = h5::open_file((dir / (ids.session() + ".h5")).string(), false, fapl.id());
    h5::Type str = h5::utf8_string_type();
    EXPECT_EQ(h5::string_attribute(f.id(), "script", str.id()), "/home/a/sweep.py");
    EXPECT_EQ(h5::string_attribute(f.id(), "label", str.id()), "night run 2");
    EXPECT_FALSE(h5::string_attribute(f.id(), "user", str.id()).empty());
    EXPECT_EQ(h5::string_attribute(f.id(), "end_time", str.id()).size(), 20u); // set at close: 2026-01-02T03:04:05Z
}

// The pickle of json.loads(text) that dynexec._runner makes of a dict or list: kept as the JSON text, given back
// as the same bytes; any other pickle stays a pickle.
TEST_F(ArchiveTest, AJsonValueIsKeptAsItsText) {
    std::string text = R"({"a": [1, 2.5, null], "b": "é"})";
    std::string pickle = "\x80\x02"s + "cjson\nloads\nX";
    for (int i = 0; i < 4; ++i) pickle.push_back(char((text.size() >> (8 * i)) & 0xff));
    pickle += text + "\x85R.";
    Pickled bad_length{pickle};
    bad_length.data[15] = char(bad_length.data[15] + 1);
    Result json = ok_result(ids.next(), Pickled{pickle}), other = ok_result(ids.next(), bad_length);
    {
        ResultsArchive archive(dir, ids.session());
        archive.write({json, other});
    }
    expect_same(ResultsArchive::read_from(dir, json.job_id)->value, Pickled{pickle});
    expect_same(ResultsArchive::read_from(dir, other.job_id)->value, bad_length);
    h5::PList fapl = h5::file_access();
    h5::File f = h5::open_file((dir / (ids.session() + ".h5")).string(), false, fapl.id());
    h5::Dataset results = h5::open_dataset(f.id(), "results");
    struct KindValue {
        char kind[8];
        char* value;
    };
    h5::Type str = h5::utf8_string_type();
    h5::Type kind = h5::short_text_type(8);
    h5::Type t = h5::compound_type(sizeof(KindValue));
    h5::insert_member(t.id(), "value_kind", offsetof(KindValue, kind), kind.id());
    h5::insert_member(t.id(), "value", offsetof(KindValue, value), str.id());
    KindValue rows[2];
    h5::read(results.id(), t.id(), rows);
    EXPECT_STREQ(rows[0].kind, "json");
    EXPECT_EQ(std::string(rows[0].value), text);
    EXPECT_STREQ(rows[1].kind, "pickle");
    h5::reclaim(t.id(), 2, rows);
}

TEST_F(ArchiveTest, FilesAreTheOwnersOnlyUnlessSharedWithTheGroup) {
    auto mode = [](const fs::path& p) { return fs::status(p).permissions() & fs::perms::all; };
    {
        ResultsArchive archive(dir / "mine", ids.session());
    }
    EXPECT_EQ(mode(dir), fs::perms::owner_all);
    EXPECT_EQ(mode(dir / "mine"), fs::perms::owner_all);
    EXPECT_EQ(mode(dir / "mine" / (ids.session() + ".h5")), fs::perms::owner_read | fs::perms::owner_write);
    JobIdGenerator other;
    {
        ResultsArchive archive(dir / "ours", other.session(), ArchiveAccess::group);
    }
    ::mode_t mask = ::umask(0);
    ::umask(mask);
    if (mask & 0040) GTEST_SKIP() << "the umask takes group read away";
    EXPECT_EQ(mode(dir / "ours"), fs::perms::owner_all | fs::perms::group_read | fs::perms::group_exec);
    EXPECT_EQ(mode(dir / "ours" / (other.session() + ".h5")),
              fs::perms::owner_read | fs::perms::owner_write | fs::perms::group_read);
}

TEST_F(ArchiveTest, AnIndexThatPointsToAnotherJobsRowIsAnErrorOfThatJob) {
    JobId a = ids.next(), b = ids.next();
    {
        ResultsArchive archive(dir, ids.session());
        archive.write({ok_result(a, std::int64_t{1}), ok_result(b, std::int64_t{2})});
    }
    {
        h5::PList fapl = h5::file_access();
        h5::File f = h5::open_file((dir / (ids.session() + ".h5")).string(), true, fapl.id());
        h5::Dataset index = h5::open_dataset(f.id(), "index");
        std::uint64_t wrong = 2; // a's entry names b's row
        h5::write_range(index.id(), H5T_NATIVE_UINT64, 0, 1, &wrong);
    }
    try {
        ResultsArchive::read_from(dir, a);
        FAIL() << "expected ArchiveError";
    } catch (const ArchiveError& e) {
        std::string what = e.what();
        EXPECT_NE(what.find("job " + a), std::string::npos) << what;
        EXPECT_NE(what.find("which holds job '" + b + "'"), std::string::npos) << what;
    }
    EXPECT_EQ(std::get<std::int64_t>(ResultsArchive::read_from(dir, b)->value), 2);
}

// libhdf5 1.10 follows a string's heap reference blindly (a wrong length or ID crashes it): each is checked first.
TEST_F(ArchiveTest, ADamagedStringReferenceIsAnErrorOfItsJobOnly) {
    JobId a = ids.next(), b = ids.next(), c = ids.next();
    {
        ResultsArchive archive(dir, ids.session());
        archive.write({ok_result(a, "alpha"s), ok_result(b, "bravo"s), ok_result(c, "charlie"s)});
    }
    std::string file = (dir / (ids.session() + ".h5")).string();
    std::uint64_t value_at = 0; // b's "value" reference in the file: after job_id (28), status (10), value_kind (8)
    {
        h5::PList fapl = h5::file_access();
        h5::File f = h5::open_file(file, false, fapl.id());
        h5::Dataset results = h5::open_dataset(f.id(), "results");
        hsize_t coord[1] = {0}, size = 0;
        unsigned mask = 0;
        haddr_t addr = 0;
        ASSERT_GE(H5Dget_chunk_info_by_coord(results.id(), coord, &mask, &addr, &size), 0);
        value_at = addr + size / h5::chunk_rows(results.id()) + 28 + 10 + 8; // row 1 of the first chunk
    }
    std::string pristine;
    {
        std::ifstream in(file, std::ios::binary);
        pristine.assign(std::istreambuf_iterator<char>(in), {});
    }
    ASSERT_EQ(pristine.substr(value_at, 4), std::string("\x05\0\0\0", 4)); // "bravo": 5 bytes
    // The length, the collection's address, the object's index: each made wrong in turn.
    for (auto [at, bytes] : {std::pair{0, "\x06\0\0\0"s}, {0, "\xff\xff\xff\x7f"s}, {4, "\x01"s}, {10, "\x7f"s}, {12, "\x2a\x01"s}}) {
        std::string damaged = pristine;
        damaged.replace(value_at + at, bytes.size(), bytes);
        std::ofstream(file, std::ios::binary | std::ios::trunc) << damaged;
        try {
            ResultsArchive::read_from(dir, b);
            ADD_FAILURE() << "expected ArchiveError for bytes at " << at;
        } catch (const ArchiveError& e) {
            std::string what = e.what();
            EXPECT_NE(what.find("job " + b), std::string::npos) << what;
            EXPECT_NE(what.find(file), std::string::npos) << what;
            EXPECT_NE(what.find("its value has a damaged reference"), std::string::npos) << what;
        }
        EXPECT_EQ(std::get<std::string>(ResultsArchive::read_from(dir, a)->value), "alpha");
        EXPECT_EQ(std::get<std::string>(ResultsArchive::read_from(dir, c)->value), "charlie");
        auto damaged_rows = ResultsArchive::damaged_rows(file);
        ASSERT_EQ(damaged_rows.size(), 1u) << at;
        EXPECT_EQ(damaged_rows[0].first, 1u);
    }
    std::ofstream(file, std::ios::binary | std::ios::trunc) << pristine;
    EXPECT_TRUE(ResultsArchive::damaged_rows(file).empty());
    EXPECT_EQ(std::get<std::string>(ResultsArchive::read_from(dir, b)->value), "bravo");
}

TEST_F(ArchiveTest, AnArchiveOfTheOldLayoutIsRefusedClearly) {
    fs::create_directories(dir);
    fs::path file = dir / (ids.session() + ".h5");
    {
        h5::PList fapl = h5::file_access();
        h5::File f = h5::create_file(file.string(), fapl.id());
        h5::create_group(f.id(), "jobs");
    }
    try {
        ResultsArchive archive(dir, ids.session());
        FAIL() << "expected ArchiveError";
    } catch (const ArchiveError& e) {
        std::string what = e.what();
        EXPECT_NE(what.find(file.string()), std::string::npos) << what;
        EXPECT_NE(what.find("older dynexec"), std::string::npos) << what;
    }
    EXPECT_THROW(ResultsArchive::read_from(dir, ids.next()), ArchiveError);
}

TEST_F(ArchiveTest, ManagerDeliversOnlyAfterTheWrite) {
    std::mutex mu;
    std::vector<Result> seen;
    std::vector<std::string> problems;
    auto m = ResultsManager::open(dir, ids.session(), [&](std::vector<Result>&& batch) {
        for (auto& r : batch) {
            // At delivery the result must already be in the file, where its location says.
            auto stored = ResultsArchive::read_from(dir, r.job_id);
            std::lock_guard lk(mu);
            if (!stored) problems.push_back("not archived at delivery: " + r.job_id);
            if (r.location != (dir / (ids.session() + ".h5")).string() + ":/results[" +
                                  std::to_string(JobIdGenerator::sequence_of(r.job_id) - 1) + "]")
                problems.push_back("bad location: " + r.location);
            seen.push_back(std::move(r));
        }
    });
    constexpr int n = 500;
    for (int i = 0; i < n; ++i) m->accept(ok_result(ids.next(), std::int64_t{i}));
    m->drain();
    EXPECT_EQ(m->archived(), std::uint64_t(n));
    {
        std::lock_guard lk(mu);
        EXPECT_EQ(seen.size(), std::size_t(n)); // drain returned only after every delivery
        EXPECT_TRUE(problems.empty()) << problems.front();
    }
    EXPECT_EQ(std::get<std::int64_t>(m->find(seen[7].job_id)->value), 7);
    EXPECT_TRUE(m->last_error().empty());
    m->close();
    m->close();
}

// A loop's turn: a few small results are archived and handed on by the loop's own thread when it ends (no
// hand-off to the writer); a larger batch goes to the writer, in one piece; outside a turn, to the writer.
TEST_F(ArchiveTest, ResultsOfALoopsTurnAreArchivedAtItsEndOnItsThreadWhenFew) {
    std::mutex mu;
    std::vector<std::pair<std::thread::id, std::size_t>> batches; // delivering thread, batch size
    auto m = ResultsManager::open(dir, ids.session(), [&](std::vector<Result>&& batch) {
        for (auto& r : batch) EXPECT_TRUE(ResultsArchive::read_from(dir, r.job_id)) << r.job_id; // durable first
        std::lock_guard lk(mu);
        batches.emplace_back(std::this_thread::get_id(), batch.size());
    });
    auto here = std::this_thread::get_id();
    {
        Turn turn;
        m->accept(ok_result(ids.next(), std::int64_t{1}));
        m->accept(ok_result(ids.next(), std::int64_t{2}));
        std::lock_guard lk(mu);
        EXPECT_TRUE(batches.empty()); // held until the turn ends
    }
    {
        std::lock_guard lk(mu);
        ASSERT_EQ(batches.size(), 1u);
        EXPECT_EQ(batches[0], std::make_pair(here, std::size_t(2)));
    }
    {
        Turn turn;
        for (int i = 0; i < 100; ++i) m->accept(ok_result(ids.next(), std::int64_t{i}));
    }
    m->accept(ok_result(ids.next(), std::int64_t{3})); // no turn: the writer's
    m->drain();
    std::lock_guard lk(mu);
    std::size_t by_writer = 0;
    for (std::size_t i = 1; i < batches.size(); ++i) {
        EXPECT_NE(batches[i].first, here);
        by_writer += batches[i].second;
    }
    EXPECT_EQ(by_writer, 101u);
    EXPECT_EQ(m->archived(), 103u);
}

// A big value is not written on a loop's thread, which would stop its other messages meanwhile.
TEST_F(ArchiveTest, ALargeResultOfATurnGoesToTheWriter) {
    std::promise<std::thread::id> delivered_on;
    auto m = ResultsManager::open(dir, ids.session(),
                                  [&](std::vector<Result>&&) { delivered_on.set_value(std::this_thread::get_id()); });
    {
        Turn turn;
        m->accept(ok_result(ids.next(), Bytes{std::string(1 << 20, 'x')}));
    }
    EXPECT_NE(delivered_on.get_future().get(), std::this_thread::get_id());
    m->close();
}

// close() from another thread while a loop's turn holds a result: it is archived before the file closes,
// never handed on as a success that is not in the file.
TEST_F(ArchiveTest, CloseDuringATurnWritesItsResultsFirst) {
    std::promise<Result> got;
    auto m = ResultsManager::open(dir, ids.session(), [&](std::vector<Result>&& batch) { got.set_value(batch.at(0)); });
    JobId id = ids.next();
    std::promise<void> accepted;
    std::thread loop([&] {
        Turn turn;
        m->accept(ok_result(id, std::int64_t{7}));
        accepted.set_value();
        std::this_thread::sleep_for(std::chrono::milliseconds(100)); // close() starts meanwhile
    });
    accepted.get_future().wait();
    std::thread closer([&] { m->close(); });
    auto r = got.get_future().get();
    loop.join();
    closer.join();
    EXPECT_EQ(r.error_type, "") << r.message;
    EXPECT_FALSE(r.location.empty());
    auto stored = ResultsArchive::read_from(dir, id);
    ASSERT_TRUE(stored);
    EXPECT_EQ(std::get<std::int64_t>(stored->value), 7);
}

TEST_F(ArchiveTest, ManagerStillDeliversWhenTheWriteFails) {
    std::mutex mu;
    std::vector<Result> seen;
    ResultsManager m(dir, ids.session(), [&](std::vector<Result>&& batch) {
        std::lock_guard lk(mu);
        for (auto& r : batch) seen.push_back(std::move(r));
    });
    JobId id = ids.next();
    m.accept(ok_result(id, std::int64_t{1}));
    m.drain();
    m.accept(ok_result(id, std::int64_t{2})); // a duplicate cannot be archived
    m.drain();
    ASSERT_EQ(seen.size(), 2u);
    EXPECT_FALSE(seen[0].location.empty());
    EXPECT_TRUE(seen[1].location.empty());
    EXPECT_NE(m.last_error().find("already archived"), std::string::npos) << m.last_error();
}

TEST_F(ArchiveTest, ManagerMayBeReleasedFromItsOwnCallback) {
    // Signals when the writer thread has let go of everything, the callback included.
    std::promise<void> finished;
    struct Sentinel {
        std::promise<void>* p;
        ~Sentinel() { p->set_value(); }
    };
    auto sentinel = std::make_shared<Sentinel>(&finished);
    std::promise<void> released;
    auto holder = std::make_shared<std::shared_ptr<ResultsManager>>();
    JobId id = ids.next();
    {
        auto m = ResultsManager::open(dir, ids.session(), [holder, sentinel, go = released.get_future().share()](auto&&) {
            go.wait();
            holder->reset(); // the last reference: destroyed on the writer thread
        });
        *holder = m;
        m->accept(ok_result(id, 1.0));
    }
    sentinel.reset();
    released.set_value();
    ASSERT_EQ(finished.get_future().wait_for(std::chrono::seconds(5)), std::future_status::ready);
    EXPECT_FALSE(ResultsManager::live(ids.session()));
    EXPECT_TRUE(ResultsArchive::read_from(dir, id)); // written, flushed and closed by the detached writer
}

TEST_F(ArchiveTest, ManagerWithoutArchiveDelivers) {
    std::atomic<int> delivered{0};
    std::atomic<bool> located{false};
    ResultsManager m(std::nullopt, ids.session(), [&](std::vector<Result>&& batch) {
        for (auto& r : batch) {
            located = located || !r.location.empty();
            ++delivered;
        }
    });
    JobId id = ids.next();
    m.accept(ok_result(id, 1.0));
    m.accept(ok_result(ids.next(), 2.0));
    m.drain();
    EXPECT_EQ(delivered, 2);
    EXPECT_FALSE(located);
    EXPECT_FALSE(m.find(id));
    EXPECT_FALSE(m.dir());
    m.close();
    m.accept(ok_result(ids.next(), 3.0)); // after close: delivered at once
    EXPECT_EQ(delivered, 3);
    EXPECT_FALSE(fs::exists(dir));
}

TEST_F(ArchiveTest, FinderUsesTheLiveManagerThenTheFile) {
    auto m = ResultsManager::open(dir, ids.session(), nullptr);
    EXPECT_EQ(ResultsManager::live(ids.session()), m);
    JobId id = ids.next();
    m->accept(ok_result(id, std::string("found")));
    // Straight after accept: the finder drains the live manager, whichever spelling of the directory.
    auto r = ResultsFinder::find(dir / "." / "", id);
    ASSERT_TRUE(r);
    EXPECT_EQ(std::get<std::string>(r->value), "found");
    EXPECT_FALSE(ResultsFinder::find(dir, ids.next()));

    m->close();
    EXPECT_FALSE(ResultsManager::live(ids.session()));
    EXPECT_EQ(std::get<std::string>(ResultsFinder::find(dir, id)->value), "found"); // from the file

    JobIdGenerator other;
    EXPECT_FALSE(ResultsFinder::find(dir, other.next())); // no such file
    EXPECT_THROW(ResultsFinder::find(dir, "0123-bad"), InvalidJob);
    EXPECT_THROW(ResultsFinder::find(dir, ""), InvalidJob);
}

TEST_F(ArchiveTest, KeepsWhatTheJobPrintedAndTheNewStatuses) {
    Result killed = ok_result(ids.next(), std::monostate{});
    killed.status = Status::killed;
    killed.captured_stdout = "step 1\nstep 2 ✓\n";
    killed.captured_stderr = "warning: slow\n";
    Result timeout = ok_result(ids.next(), std::monostate{});
    timeout.status = Status::timeout;
    ResultsArchive archive(dir, ids.session());
    archive.write({killed, timeout});
    auto k = archive.read(killed.job_id), t = archive.read(timeout.job_id);
    ASSERT_TRUE(k && t);
    EXPECT_EQ(k->status, Status::killed);
    EXPECT_EQ(k->captured_stdout, killed.captured_stdout);
    EXPECT_EQ(k->captured_stderr, killed.captured_stderr);
    EXPECT_EQ(t->status, Status::timeout);
    EXPECT_EQ(t->captured_stdout, "");
}

TEST_F(ArchiveTest, ManagerFailsOnlyTheJobWhoseStringIsNotUtf8) {
    std::mutex mu;
    std::vector<Result> seen;
    ResultsManager m(dir, ids.session(), [&](std::vector<Result>&& batch) {
        std::lock_guard lk(mu);
        for (auto& r : batch) seen.push_back(std::move(r));
    });
    Result bad_value = ok_result(ids.next(), std::string("caf\xe9 au lait"));
    bad_value.service = "test.latin1";
    Result bad_message = ok_result(ids.next(), std::monostate{});
    bad_message.status = Status::error;
    bad_message.error_type = "std::runtime_error";
    bad_message.message = "bad \xff\xfe";
    Result good = ok_result(ids.next(), std::string("h\xc3\xa9llo")); // é, valid
    good.traceback = "trace \xed\xa0\x80"; // a surrogate: escaped, the result stays ok
    for (auto* r : {&bad_value, &bad_message, &good}) m.accept(*r);
    m.drain();
    ASSERT_EQ(seen.size(), 3u);
    EXPECT_EQ(seen[0].status, Status::error);
    EXPECT_EQ(seen[0].error_type, "dynexec.ResultDecodeError");
    EXPECT_NE(seen[0].message.find("job " + bad_value.job_id + ": service test.latin1 returned a string that is not UTF-8"),
              std::string::npos) << seen[0].message;
    EXPECT_NE(seen[0].message.find("caf\\xe9 au lait"), std::string::npos) << seen[0].message;
    EXPECT_EQ(seen[1].error_type, "dynexec.ResultDecodeError");
    EXPECT_NE(seen[1].message.find("returned a string that is not UTF-8 as its error message"), std::string::npos)
        << seen[1].message;
    EXPECT_EQ(seen[2].status, Status::ok);
    EXPECT_EQ(std::get<std::string>(seen[2].value), "h\xc3\xa9llo");
    EXPECT_EQ(seen[2].traceback, "trace \\xed\\xa0\\x80");
    // All three are archived, as delivered.
    EXPECT_EQ(m.find(bad_value.job_id)->error_type, "dynexec.ResultDecodeError");
    EXPECT_EQ(std::get<std::string>(m.find(good.job_id)->value), "h\xc3\xa9llo");
}

// A tmpfs of a few hundred KiB, mounted for one test and always unmounted; skips unless root may mount.
class FullDiskTest : public ArchiveTest {
protected:
    void SetUp() override {
        ArchiveTest::SetUp();
        if (::geteuid() != 0) GTEST_SKIP() << "needs root to mount a tmpfs";
        fs::create_directories(dir);
        if (::mount("tmpfs", dir.c_str(), "tmpfs", 0, "size=256k") != 0)
            GTEST_SKIP() << "cannot mount a tmpfs here: " << std::strerror(errno);
        mounted = true;
    }
    void TearDown() override {
        if (mounted) ::umount2(dir.c_str(), MNT_DETACH);
        ArchiveTest::TearDown();
    }
    void grow(const char* size) {
        ASSERT_EQ(::mount("tmpfs", dir.c_str(), "tmpfs", MS_REMOUNT, size), 0) << std::strerror(errno);
    }
    bool mounted = false;
};

TEST_F(FullDiskTest, NoFutureSucceedsWithoutItsResultInTheFileAndWritingResumes) {
    // The disk fills at a different point of a batch (heap bytes, rows, metadata) for each size.
    for (const char* size : {"size=192k", "size=256k", "size=300k", "size=352k", "size=420k"}) {
        SCOPED_TRACE(size);
        fs::remove_all(dir / "archive");
        grow(size);
        JobIdGenerator ids; // a new session, a new file
        std::mutex mu;
        std::vector<Result> seen;
        auto m = std::make_unique<ResultsManager>(dir / "archive", ids.session(), [&](std::vector<Result>&& batch) {
            std::lock_guard lk(mu);
            for (auto& r : batch) seen.push_back(std::move(r));
        });
        auto payload = [](std::uint64_t seq) { return std::string(1000 + seq % 7, char('a' + seq % 26)) + std::to_string(seq); };
        std::vector<JobId> jobs;
        auto run = [&](int batches, int per_batch) {
            for (int b = 0; b < batches; ++b) {
                for (int i = 0; i < per_batch; ++i) {
                    jobs.push_back(ids.next());
                    Result r = ok_result(jobs.back(), payload(JobIdGenerator::sequence_of(jobs.back())));
                    if (i % 3 == 0) r.value = std::int64_t(JobIdGenerator::sequence_of(jobs.back())); // rows, no bytes
                    m->accept(std::move(r));
                }
                m->drain(); // one batch at a time, so that the disk fills between and within batches
            }
        };
        run(40, 20 + int(std::strlen(size)) % 7); // ~550 KiB into a smaller disk
        auto failed_when_full = [&] {
            std::lock_guard lk(mu);
            return std::count_if(seen.begin(), seen.end(), [](const Result& r) { return r.status != Status::ok; });
        }();
        ASSERT_GT(failed_when_full, 0) << "the disk never filled";
        EXPECT_NE(m->last_error().find("No space left on device"), std::string::npos) << m->last_error();
        grow("size=16m");
        std::size_t before = jobs.size();
        run(10, 20);
        m->close();
        m.reset();

        std::lock_guard lk(mu);
        ASSERT_EQ(seen.size(), jobs.size());
        for (auto& r : seen) {
            SCOPED_TRACE(r.job_id);
            auto stored = ResultsArchive::read_from(dir / "archive", r.job_id);
            std::uint64_t seq = JobIdGenerator::sequence_of(r.job_id);
            if (r.status == Status::ok) {
                ASSERT_TRUE(stored) << "reported success, not in the archive";
                if (auto* i = std::get_if<std::int64_t>(&stored->value)) EXPECT_EQ(*i, std::int64_t(seq));
                else EXPECT_EQ(std::get<std::string>(stored->value), payload(seq));
            } else {
                EXPECT_EQ(r.error_type, "dynexec.ArchiveError");
                EXPECT_NE(r.message.find(r.job_id), std::string::npos) << r.message;
                EXPECT_NE(r.message.find(".h5"), std::string::npos) << r.message;
                EXPECT_NE(r.message.find("No space left on device"), std::string::npos) << r.message;
                EXPECT_FALSE(stored) << "failed, yet a row reads as a result";
            }
        }
        // Space came back: every later result is archived.
        for (std::size_t i = before; i < seen.size(); ++i) EXPECT_EQ(seen[i].status, Status::ok) << seen[i].message;
    }
}

} // namespace
} // namespace dynexec
