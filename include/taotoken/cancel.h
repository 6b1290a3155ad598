#ifndef TAOTOKEN_CANCEL_H
#define TAOTOKEN_CANCEL_H

/// @file
/// `CancelToken`: lets another thread stop a call.

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <utility>
#include <vector>

#include "taotoken/version.h"

TAOTOKEN_BEGIN_NAMESPACE

/// Cancels the calls it is given to (`RequestOptions::cancel`).
///
/// `cancel()` ends a call at once: a wait between retries, a transfer
/// waiting for its connection, its headers or the next bytes of a stream.
/// The call then returns an `Error` of kind `cancelled` (and leaves a
/// `cancelled` usage record). Once cancelled, a token stays cancelled: later
/// calls given it fail at once.
///
/// Thread safety: all methods are thread-safe; share it with
/// `std::shared_ptr`.
class CancelToken {
 public:
  /// Requests cancellation; idempotent. Linked tokens are cancelled too.
  void cancel() noexcept {
    std::vector<std::weak_ptr<CancelToken>> children;
    std::vector<std::pair<std::uint64_t, std::function<void()>>> hooks;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (cancelled_.load()) return;
      cancelled_.store(true);
      children.swap(children_);
      hooks.swap(hooks_);
    }
    cv_.notify_all();
    for (auto& [id, fn] : hooks) {
      try {
        fn();
      } catch (...) {  // a hook must not stop the others
      }
    }
    for (auto& w : children)
      if (auto c = w.lock()) c->cancel();
  }
  /// For the library: runs `fn` once when the token is cancelled (on the
  /// cancelling thread; at once if it already is). Returns an id for
  /// `remove_hook`, 0 when `fn` already ran.
  std::uint64_t add_hook(std::function<void()> fn) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!cancelled_.load()) {
        hooks_.emplace_back(++next_hook_, std::move(fn));
        return next_hook_;
      }
    }
    fn();
    return 0;
  }
  /// Forgets a hook added by `add_hook` (no effect once it ran).
  void remove_hook(std::uint64_t id) noexcept {
    if (id == 0) return;
    std::lock_guard<std::mutex> lock(mu_);
    for (auto it = hooks_.begin(); it != hooks_.end(); ++it)
      if (it->first == id) {
        hooks_.erase(it);
        return;
      }
  }
  /// Cancelling this token will cancel `child` as well (at once if this one
  /// is already cancelled).
  void link(const std::shared_ptr<CancelToken>& child) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!cancelled_.load()) {
        children_.push_back(child);
        return;
      }
    }
    child->cancel();
  }
  /// True once `cancel()` was called.
  bool cancelled() const noexcept { return cancelled_.load(); }
  /// Sleeps for `d` unless cancelled first; returns false when cancelled.
  bool wait_for(std::chrono::milliseconds d) const {
    std::unique_lock<std::mutex> lock(mu_);
    return !cv_.wait_for(lock, d, [this] { return cancelled_.load(); });
  }
  /// For the library's transport: the flag polled during transfers.
  const std::atomic<bool>& flag() const noexcept { return cancelled_; }

 private:
  mutable std::mutex mu_;
  mutable std::condition_variable cv_;
  std::atomic<bool> cancelled_{false};
  std::vector<std::weak_ptr<CancelToken>> children_;
  std::vector<std::pair<std::uint64_t, std::function<void()>>> hooks_;
  std::uint64_t next_hook_ = 0;
};

TAOTOKEN_END_NAMESPACE

#endif  // TAOTOKEN_CANCEL_H
