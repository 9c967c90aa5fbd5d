"""Nothing from the network is trusted (issue 10): a malformed array never reaches numpy.

A native plugin returns arrays whose headers lie (the fuzz run's findings: shape [-1, -1], dtype "O8" and "U8",
fewer bytes than the shape needs). Without an archive the value reaches _core's array conversion, which refuses
it (the wire decoder's own refusal is tested in cpp/wire/protocol_test.cpp); with one, the archive refuses it
first. Either way only that job fails, the others and the collector live on, and the archive reads.
"""


EVIL = r"""
#include <dynexec/service.hpp>
#include <memory>
#include <string>
#include <vector>
static dynexec::Array lying(std::string dtype, std::vector<std::int64_t> shape, std::size_t nbytes) {
    auto buf = std::make_shared<std::vector<char>>(nbytes, '\x41');
    dynexec::Array a;
    a.dtype = dtype;
    a.shape = shape;
    a.data = buf->data();
    a.nbytes = nbytes;
    a.owner = std::shared_ptr<const void>(buf, buf->data());
    return a;
}
DYNEXEC_SERVICES(r) {
    r.add({"evil.array", "an array whose header lies", {{"kind", dynexec::ValueType::string}},
           [](const dynexec::Params& p) -> dynexec::Value {
               auto& k = p.get<std::string>("kind");
               if (k == "negative") return lying("f8", {-1, -1}, 8);
               if (k == "object") return lying("O8", {2}, 16);
               if (k == "unicode") return lying("U8", {2}, 16);
               if (k == "short") return lying("f8", {1000}, 8);
               auto [a, span] = dynexec::Array::allocate<double>({2});
               span[0] = 1.5;
               span[1] = 2.5;
               return a; }});
}
"""

KINDS = {"negative": "negative", "object": "'O8'", "unicode": "'U8'", "short": "8000 bytes"}


def test_a_malformed_array_never_reaches_numpy(tmp_path, run_python, build_plugin):
    lib = build_plugin("evil", EVIL)
    out = run_python(f"""
        import dynexec, numpy as np
        dynexec.load_services({str(lib)!r})
        kinds = {KINDS!r}
        for archive in (False, {str(tmp_path / "archive")!r}):
            with dynexec.Executor(max_workers=2, archive=archive) as ex:
                jobs = [(k, ex.submit_service("evil.array", kind=k)) for _ in range(5) for k in list(kinds) + ["fine"]]
                for k, f in jobs:
                    if k == "fine":
                        assert np.array_equal(f.result(timeout=30), [1.5, 2.5])
                        continue
                    exc = f.exception(timeout=30)
                    # Without an archive the value reaches _core, which refuses it; the archive refuses it first.
                    wanted = (dynexec.ResultDecodeError,) if not archive else (dynexec.ResultDecodeError, dynexec.ArchiveError)
                    assert isinstance(exc, wanted), repr(exc)
                    assert f.job_id in str(exc), str(exc)
                    if not archive:
                        assert kinds[k] in str(exc), str(exc)
                assert ex.submit(pow, 2, 10).result(timeout=30) == 1024  # the collector lives on
                if archive:
                    records = dynexec.read_archive(ex.archive / f"{{ex.session}}.h5")
                    fine = [r for r in records.values() if r["service"] == "evil.array" and r["status"] == "ok"]
                    assert len(fine) == 5 and all(np.array_equal(r["value"], [1.5, 2.5]) for r in fine), fine
            print("ok", bool(archive))
    """, timeout=240)
    assert out.split() == ["ok", "False", "ok", "True"]
