// io::DirectoryWriter (a directory that changes as a whole) and the temporary-name rules
// (io::temp_suffix, io::is_stale_temp). The kill-at-every-rename and full-disk cases run on the
// real binary in tests/python/test_faults.py.
#include "helpers.hpp"

#include <sys/stat.h>
#include <unistd.h>

namespace fs = std::filesystem;

namespace {

std::vector<std::string> dir_names(const fs::path& d) {
  std::vector<std::string> n;
  for (const auto& e : fs::directory_iterator(d)) n.push_back(e.path().filename().string());
  std::sort(n.begin(), n.end());
  return n;
}

void put(sae::io::DirectoryWriter& w, const std::string& name, const std::string& text) {
  w.write_file(name, std::span<const std::byte>(reinterpret_cast<const std::byte*>(text.data()), text.size()));
}

}  // namespace

TEST_CASE("temporary names: stale only for a dead process of this host", "[io][atomic]") {
  const std::string suffix = sae::io::temp_suffix();
  REQUIRE(suffix.rfind(".tmp." + std::to_string(::getpid()) + ".", 0) == 0);
  CHECK_FALSE(sae::io::is_stale_temp("x" + suffix, "x"));  // ours, alive
  const std::string dead = std::to_string(sae_test::dead_pid());
  const std::string host = suffix.substr(suffix.rfind('.') + 1);
  CHECK(sae::io::is_stale_temp("x.tmp." + dead + ".7." + host, "x"));
  CHECK(sae::io::is_stale_temp("x.tmp." + dead + ".7", "x"));  // older names carry no host
  CHECK_FALSE(sae::io::is_stale_temp("x.tmp." + dead + ".7.other-host", "x"));
  CHECK_FALSE(sae::io::is_stale_temp("x.tmp." + std::to_string(::getppid()) + ".7." + host, "x"));
  CHECK_FALSE(sae::io::is_stale_temp("y.tmp." + dead + ".7." + host, "x"));
  CHECK_FALSE(sae::io::is_stale_temp("x.tmp.12a.7", "x"));
  CHECK_FALSE(sae::io::is_stale_temp("x.tmp.", "x"));
  CHECK_FALSE(sae::io::is_stale_temp("x.tmp.99999999999999999999.1", "x"));
}

TEST_CASE("DirectoryWriter: a new directory appears whole, an existing one is swapped", "[io][atomic]") {
  sae_test::TempDir tmp("dirw");
  const fs::path dir = tmp / "a" / "b" / "sae";
  {
    sae::io::DirectoryWriter w(dir, "cfg.json");
    put(w, "weights", "W1");
    put(w, "cfg.json", "C1");
    REQUIRE_FALSE(fs::exists(dir));  // nothing visible before commit
    w.commit();
  }
  REQUIRE(dir_names(dir) == std::vector<std::string>{"cfg.json", "weights"});
  REQUIRE(dir_names(dir.parent_path()) == std::vector<std::string>{"sae"});  // no staging left

  // Entries the new content does not write are kept (files, symlinks, subdirectories), the
  // owned ones go with the old content.
  fs::create_directories(dir / "checkpoint");
  sae_test::write_all(dir / "checkpoint" / "state", "S");
  sae_test::write_all(dir / "notes.txt", "N");
  sae_test::write_all(dir / "train_log.jsonl", "old log");
  fs::create_symlink("notes.txt", dir / "link");
  ::chmod(dir.c_str(), 0750);
  {
    sae::io::DirectoryWriter w(dir, "cfg.json", {"weights", "train_log.jsonl"});
    put(w, "weights", "W2");
    put(w, "cfg.json", "C2");
    w.commit();
  }
  REQUIRE(dir_names(dir) == std::vector<std::string>{"cfg.json", "checkpoint", "link", "notes.txt", "weights"});
  CHECK(sae_test::read_all(dir / "cfg.json") == "C2");
  CHECK(sae_test::read_all(dir / "weights") == "W2");
  CHECK(sae_test::read_all(dir / "checkpoint" / "state") == "S");
  CHECK(sae_test::read_all(dir / "link") == "N");
  CHECK(fs::is_symlink(dir / "link"));
  struct stat st {};
  REQUIRE(::stat(dir.c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0750);  // the directory keeps its permissions
  CHECK(dir_names(dir.parent_path()) == std::vector<std::string>{"sae"});
}

TEST_CASE("DirectoryWriter: no commit, no change; a symlinked target is written through", "[io][atomic]") {
  sae_test::TempDir tmp("dirw2");
  const fs::path dir = tmp / "new" / "deeper" / "sae";
  {
    sae::io::DirectoryWriter w(dir, "cfg.json");
    put(w, "cfg.json", "C");
  }  // destroyed without commit: nothing stays, not even the parents it created
  CHECK(tmp.entries() == 0);

  const fs::path real = tmp / "real";
  {
    sae::io::DirectoryWriter w(real, "cfg.json");
    put(w, "cfg.json", "C1");
    w.commit();
  }
  fs::create_directory_symlink("real", tmp / "alias");
  {
    sae::io::DirectoryWriter w(tmp / "alias", "cfg.json");
    put(w, "cfg.json", "C2");
    {
      sae::io::DirectoryWriter failing(tmp / "alias", "cfg.json");
      put(failing, "cfg.json", "never");
    }
    CHECK(sae_test::read_all(real / "cfg.json") == "C1");
    w.commit();
  }
  CHECK(fs::is_symlink(tmp / "alias"));
  CHECK(sae_test::read_all(real / "cfg.json") == "C2");
  CHECK(dir_names(tmp.path()) == std::vector<std::string>{"alias", "real"});

  sae_test::write_all(tmp / "file", "x");
  sae_test::require_io_error(
      tmp / "file", [&] { sae::io::DirectoryWriter w(tmp / "file", "cfg.json"); }, "exists and is not a directory");
  sae_test::require_io_error(
      tmp / "file", [&] { sae::io::check_directory_writable(tmp / "file"); }, "exists and is not a directory");
  sae_test::require_io_error(
      tmp / "file" / "sub", [&] { sae::io::check_directory_writable(tmp / "file" / "sub"); }, "is not a directory");
  sae::io::check_directory_writable(tmp / "x" / "y");  // creatable
}

TEST_CASE("DirectoryWriter: a dead writer's staging directory is recovered by the next one", "[io][atomic]") {
  sae_test::TempDir tmp("dirw3");
  const fs::path dir = tmp / "sae";
  fs::create_directories(dir);
  sae_test::write_all(dir / "cfg.json", "NEW");
  sae_test::write_all(dir / ("cfg.json.tmp." + std::to_string(sae_test::dead_pid()) + ".1"), "partial");
  // A writer killed after the swap, before moving checkpoint/ back: the old content with the
  // subdirectory sits in its staging directory.
  const fs::path stale = tmp / (".sae.tmp." + std::to_string(sae_test::dead_pid()) + ".0");
  fs::create_directories(stale / "checkpoint");
  sae_test::write_all(stale / "checkpoint" / "state", "S");
  sae_test::write_all(stale / "cfg.json", "OLD");
  {
    sae::io::DirectoryWriter w(dir, "cfg.json");
    put(w, "cfg.json", "NEWER");
    w.commit();
  }
  CHECK(dir_names(tmp.path()) == std::vector<std::string>{"sae"});
  CHECK(dir_names(dir) == std::vector<std::string>{"cfg.json", "checkpoint"});
  CHECK(sae_test::read_all(dir / "checkpoint" / "state") == "S");
  CHECK(sae_test::read_all(dir / "cfg.json") == "NEWER");
}

TEST_CASE("DirectoryWriter: a complete directory a dead writer left aside is put back first", "[io][atomic]") {
  // A writer without RENAME_EXCHANGE moves DIR aside before renaming the new one in; killed in
  // between, DIR is missing and the old SAE (with checkpoint/) sits under a staging name.
  sae_test::TempDir tmp("dirw4");
  const fs::path dir = tmp / "sae";
  const fs::path aside = tmp / (".sae.tmp." + std::to_string(sae_test::dead_pid()) + ".2");
  fs::create_directories(aside / "checkpoint");
  sae_test::write_all(aside / "checkpoint" / "state", "S");
  sae_test::write_all(aside / "cfg.json", "OLD");
  // An incomplete one (no key file) is only removed.
  const fs::path partial = tmp / (".sae.tmp." + std::to_string(sae_test::dead_pid()) + ".3");
  fs::create_directories(partial);
  sae_test::write_all(partial / "weights", "W");
  {
    sae::io::DirectoryWriter w(dir, "cfg.json");
    CHECK(sae_test::read_all(dir / "cfg.json") == "OLD");  // back before anything is written
    put(w, "cfg.json", "NEW");
    w.commit();
  }
  CHECK(dir_names(tmp.path()) == std::vector<std::string>{"sae"});
  CHECK(sae_test::read_all(dir / "cfg.json") == "NEW");
  CHECK(sae_test::read_all(dir / "checkpoint" / "state") == "S");
}
