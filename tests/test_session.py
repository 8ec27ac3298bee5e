"""Version pairing of pyspark / delta-spark / Delta jars, and jar discovery."""

from __future__ import annotations

from pathlib import Path

import pytest

from tsa_lib.spark.session import DeltaJars, VersionMismatchError, check_versions, find_delta_jars

REQ = "pyspark<=4.2.0,>=4.0.1"
JARS = DeltaJars(spark_binary="4.2", delta_version="4.4.0", files=("x.jar",))


def test_matching_set_passes() -> None:
    check_versions("4.2.0", "4.4.0", JARS, REQ)


@pytest.mark.parametrize("pyspark, delta, jars, req, words", [
    ("4.3.0", "4.4.0", JARS, REQ, ["pyspark=4.3.0", "Spark 4.2"]),
    ("4.2.0", "4.4.1", JARS, REQ, ["delta-spark=4.4.1", "4.4.0"]),
    ("4.2.0", "4.4.0", DeltaJars("4.1", "4.4.0", ()), REQ, ["built for Spark 4.1", "pyspark is 4.2.0"]),
    ("4.0.0", "4.4.0", DeltaJars("4.0", "4.4.0", ()), REQ, ["requires", "pyspark is 4.0.0"]),
    (None, "4.4.0", JARS, REQ, ["pyspark is not installed"]),
    ("4.2.0", None, JARS, REQ, ["delta-spark is not installed"]),
])
def test_mismatch_names_versions(pyspark: str | None, delta: str | None, jars: DeltaJars, req: str,
                                 words: list[str]) -> None:
    with pytest.raises(VersionMismatchError) as e:
        check_versions(pyspark, delta, jars, req)
    for w in words:
        assert w in str(e.value)


def test_find_jars_skips_what_pyspark_ships(tmp_path: Path) -> None:
    jars, shipped = tmp_path / "jars", tmp_path / "pyspark_jars"
    jars.mkdir()
    shipped.mkdir()
    for n in ("delta-spark_4.2_2.13-4.4.0.jar", "delta-storage-4.4.0.jar", "scala-library-2.13.17.jar"):
        (jars / n).write_bytes(b"")
    (shipped / "scala-library-2.13.16.jar").write_bytes(b"")
    found = find_delta_jars(jars, shipped)
    assert (found.spark_binary, found.delta_version) == ("4.2", "4.4.0")
    assert sorted(Path(f).name for f in found.files) == ["delta-spark_4.2_2.13-4.4.0.jar", "delta-storage-4.4.0.jar"]


def test_find_jars_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="make jars"):
        find_delta_jars(tmp_path / "missing", tmp_path)
    (tmp_path / "j").mkdir()
    with pytest.raises(FileNotFoundError, match="no delta-spark"):
        find_delta_jars(tmp_path / "j", tmp_path)
    (tmp_path / "j" / "delta-spark_4.2_2.13-4.4.0.jar").write_bytes(b"")
    (tmp_path / "j" / "delta-spark_4.1_2.13-4.3.1.jar").write_bytes(b"")
    with pytest.raises(VersionMismatchError, match="two delta-spark jars"):
        find_delta_jars(tmp_path / "j", tmp_path)


def test_installed_set_matches_fetched_jars() -> None:
    """The environment `make setup` built is itself a matching set (what get_spark checks)."""
    from tsa_lib.spark import session

    jars = find_delta_jars()
    check_versions(session._dist_version("pyspark"), session._dist_version("delta-spark"), jars,
                   session._pyspark_range_of_delta())
