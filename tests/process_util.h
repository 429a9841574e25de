// Real processes for end-to-end tests: start a daemon, wait for its
// "... listening on ADDR" line, run a command to completion with a timeout.
#pragma once

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace stip::test {

inline pid_t Spawn(const std::vector<std::string>& argv, int stdout_fd, int stderr_fd,
                   int stdin_fd = -1) {
  pid_t pid = fork();
  if (pid < 0) throw std::runtime_error("fork failed");
  if (pid == 0) {
    setpgid(0, 0);
    if (stdout_fd >= 0) dup2(stdout_fd, 1);
    if (stderr_fd >= 0) dup2(stderr_fd, 2);
    dup2(stdin_fd >= 0 ? stdin_fd : open("/dev/null", O_RDONLY), 0);
    std::vector<char*> args;
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    execv(args[0], args.data());
    _exit(127);
  }
  return pid;
}

// Waits up to `seconds` for the process to exit; returns its status or -1.
inline int WaitExit(pid_t pid, double seconds) {
  auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  int status = 0;
  while (std::chrono::steady_clock::now() < deadline) {
    pid_t r = waitpid(pid, &status, WNOHANG);
    if (r == pid) return status;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return -1;
}

class Daemon {
 public:
  Daemon(const std::vector<std::string>& argv, const std::string& log_path) : argv_(argv) {
    int fds[2];
    if (pipe(fds) != 0) throw std::runtime_error("pipe failed");
    int log = open(log_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    pid_ = Spawn(argv, fds[1], log);
    close(fds[1]);
    if (log >= 0) close(log);
    out_ = fds[0];
    log_path_ = log_path;
  }
  ~Daemon() { Stop(); }
  Daemon(const Daemon&) = delete;
  Daemon& operator=(const Daemon&) = delete;

  // The address from the "listening on ADDR" line (throws after `seconds`).
  std::string WaitListening(double seconds = 120) {
    auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
    while (std::chrono::steady_clock::now() < deadline) {
      size_t nl = buffer_.find('\n');
      while (nl != std::string::npos) {
        std::string line = buffer_.substr(0, nl);
        buffer_.erase(0, nl + 1);
        lines_.push_back(line);
        size_t at = line.find("listening on ");
        if (at != std::string::npos) return line.substr(at + 13);
        nl = buffer_.find('\n');
      }
      pollfd p{out_, POLLIN, 0};
      if (poll(&p, 1, 100) > 0) {
        char buf[4096];
        ssize_t n = read(out_, buf, sizeof buf);
        if (n > 0) buffer_.append(buf, static_cast<size_t>(n));
        if (n == 0) break;  // the daemon closed stdout: it exited
      }
    }
    throw std::runtime_error(argv_[0] + " did not report listening; see " + log_path_);
  }
  // What follows `marker` in a stdout line read so far ("" if none), e.g.
  // Value("admin on ") for stip-server's admin address.
  std::string Value(const std::string& marker) const {
    for (const std::string& line : lines_) {
      size_t at = line.find(marker);
      if (at != std::string::npos) return line.substr(at + marker.size());
    }
    return "";
  }
  // The stdout lines read so far.
  const std::vector<std::string>& lines() const { return lines_; }
  // What the daemon writes to stdout from here until it closes it (it exits)
  // or `seconds` pass, beyond the lines read so far.
  std::string ReadRest(double seconds = 60) {
    auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
    while (out_ >= 0 && std::chrono::steady_clock::now() < deadline) {
      pollfd p{out_, POLLIN, 0};
      if (poll(&p, 1, 100) <= 0) continue;
      char buf[4096];
      ssize_t n = read(out_, buf, sizeof buf);
      if (n <= 0) break;
      buffer_.append(buf, static_cast<size_t>(n));
    }
    std::string rest;
    rest.swap(buffer_);
    return rest;
  }
  void Signal(int sig) {
    if (pid_ > 0) kill(pid_, sig);
  }
  // SIGTERM, then SIGKILL after a grace period. Returns the exit status.
  int Stop(double grace = 10) {
    if (pid_ <= 0) return 0;
    kill(pid_, SIGTERM);
    int status = WaitExit(pid_, grace);
    if (status == -1) {
      kill(pid_, SIGKILL);
      waitpid(pid_, &status, 0);
    }
    pid_ = -1;
    if (out_ >= 0) close(out_);
    out_ = -1;
    return status;
  }
  void Kill9() {
    if (pid_ <= 0) return;
    kill(pid_, SIGKILL);
    int status;
    waitpid(pid_, &status, 0);
    pid_ = -1;
  }
  const std::string& log_path() const { return log_path_; }
  pid_t pid() const { return pid_; }

 private:
  std::vector<std::string> argv_;
  pid_t pid_ = -1;
  int out_ = -1;
  std::string buffer_;
  std::vector<std::string> lines_;
  std::string log_path_;
};

struct RunResult {
  int exit_code = -1;  // -1: killed (timeout or signal)
  std::string out;
  std::string err;
};

// Runs a command to completion (killed after `seconds`), `input` on its stdin
// (written before its output is read: keep it under a pipe's 64 KiB).
inline RunResult Run(const std::vector<std::string>& argv, double seconds = 300,
                     const std::string& input = "") {
  int o[2], e[2], i[2];
  if (pipe2(o, O_CLOEXEC) != 0 || pipe2(e, O_CLOEXEC) != 0 || pipe2(i, O_CLOEXEC) != 0) {
    throw std::runtime_error("pipe failed");
  }
  pid_t pid = Spawn(argv, o[1], e[1], i[0]);
  close(o[1]);
  close(e[1]);
  close(i[0]);
  signal(SIGPIPE, SIG_IGN);  // a child that exits without reading fails the write instead
  if (!input.empty() && write(i[1], input.data(), input.size()) < 0) {
    // the child exited before reading: its exit status tells
  }
  close(i[1]);
  RunResult r;
  auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  bool open_o = true, open_e = true;
  while ((open_o || open_e) && std::chrono::steady_clock::now() < deadline) {
    pollfd p[2] = {{o[0], POLLIN, 0}, {e[0], POLLIN, 0}};
    if (poll(p, 2, 100) <= 0) continue;
    char buf[4096];
    for (int i = 0; i < 2; ++i) {
      if (!(p[i].revents & (POLLIN | POLLHUP))) continue;
      ssize_t n = read(p[i].fd, buf, sizeof buf);
      if (n > 0) {
        (i == 0 ? r.out : r.err).append(buf, static_cast<size_t>(n));
      } else {
        (i == 0 ? open_o : open_e) = false;
      }
    }
  }
  close(o[0]);
  close(e[0]);
  int status = WaitExit(
      pid,
      std::max(0.1,
               std::chrono::duration<double>(deadline - std::chrono::steady_clock::now()).count()));
  if (status == -1) {
    kill(pid, SIGKILL);
    waitpid(pid, &status, 0);
    return r;
  }
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

// A child process with its stdin, stdout and stderr on pipes, read while it
// runs (for a chat, or to act in the middle of a generation). Killed (SIGKILL)
// when destroyed if it has not exited.
class Interactive {
 public:
  explicit Interactive(const std::vector<std::string>& argv) {
    signal(SIGPIPE, SIG_IGN);  // a write to a child that exited fails instead
    // Close-on-exec: processes started later (a restarted server) must not
    // hold this child's stdin open.
    int in[2], o[2], e[2];
    if (pipe2(in, O_CLOEXEC) != 0 || pipe2(o, O_CLOEXEC) != 0 || pipe2(e, O_CLOEXEC) != 0) {
      throw std::runtime_error("pipe failed");
    }
    pid_ = fork();
    if (pid_ < 0) throw std::runtime_error("fork failed");
    if (pid_ == 0) {
      setpgid(0, 0);
      dup2(in[0], 0);
      dup2(o[1], 1);
      dup2(e[1], 2);
      for (int fd : {in[0], in[1], o[0], o[1], e[0], e[1]}) close(fd);
      std::vector<char*> args;
      for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
      args.push_back(nullptr);
      execv(args[0], args.data());
      _exit(127);
    }
    close(in[0]);
    close(o[1]);
    close(e[1]);
    in_ = in[1];
    out_ = o[0];
    err_ = e[0];
  }
  ~Interactive() {
    CloseStdin();
    if (pid_ > 0) {
      kill(pid_, SIGKILL);
      int status;
      waitpid(pid_, &status, 0);
    }
    if (out_ >= 0) close(out_);
    if (err_ >= 0) close(err_);
  }
  Interactive(const Interactive&) = delete;
  Interactive& operator=(const Interactive&) = delete;

  void Write(const std::string& text) {
    size_t done = 0;
    while (done < text.size()) {
      ssize_t n = ::write(in_, text.data() + done, text.size() - done);
      if (n <= 0) throw std::runtime_error("write to the child's stdin failed");
      done += static_cast<size_t>(n);
    }
  }
  void CloseStdin() {
    if (in_ >= 0) close(in_);
    in_ = -1;
  }
  // Reads what is available for up to `seconds`, until `done(out, err)`
  // holds; returns whether it did.
  template <class Pred>
  bool ReadUntil(Pred done, double seconds) {
    auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
    while (!done(out, err)) {
      if (std::chrono::steady_clock::now() >= deadline) return false;
      if (!Pump(50)) {
        if (done(out, err)) return true;
        if (out_ < 0 && err_ < 0) return false;
      }
    }
    return true;
  }
  // Reads to the end of both streams and waits for the exit; returns the exit
  // code (-1: killed, timed out or by a signal).
  int Wait(double seconds) {
    auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
    while ((out_ >= 0 || err_ >= 0) && std::chrono::steady_clock::now() < deadline) Pump(50);
    int status = WaitExit(
        pid_,
        std::max(
            0.1,
            std::chrono::duration<double>(deadline - std::chrono::steady_clock::now()).count()));
    if (status == -1) return -1;
    pid_ = -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  }

  std::string out, err;

 private:
  // One poll of both streams; false if nothing was read.
  bool Pump(int timeout_ms) {
    pollfd p[2] = {{out_, POLLIN, 0}, {err_, POLLIN, 0}};
    if (poll(p, 2, timeout_ms) <= 0) return false;
    bool got = false;
    char buf[4096];
    for (int i = 0; i < 2; ++i) {
      if (p[i].fd < 0 || !(p[i].revents & (POLLIN | POLLHUP))) continue;
      ssize_t n = read(p[i].fd, buf, sizeof buf);
      if (n > 0) {
        (i == 0 ? out : err).append(buf, static_cast<size_t>(n));
        got = true;
      } else {
        close(p[i].fd);
        (i == 0 ? out_ : err_) = -1;
      }
    }
    return got;
  }

  pid_t pid_ = -1;
  int in_ = -1, out_ = -1, err_ = -1;
};

}  // namespace stip::test
