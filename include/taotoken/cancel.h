#ifndef TAOTOKEN_CANCEL_H
#define TAOTOKEN_CANCEL_H

/// @file
/// `CancelToken`: lets another thread stop a call.

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <vector>

#include "taotoken/version.h"

TAOTOKEN_BEGIN_NAMESPACE

/// Cancels the calls it is given to (`RequestOptions::cancel`).
///
/// `cancel()` ends a wait between retries at once, and an HTTP transfer in
/// progress at libcurl's next progress check (well under a second while
/// data flows, at most about a second while the server is silent). The call
/// then returns an `Error` of kind `cancelled`. Once cancelled, a token stays
/// cancelled: later calls given it fail at once.
///
/// Thread safety: all methods are thread-safe; share it with
/// `std::shared_ptr`.
class CancelToken {
 public:
  /// Requests cancellation; idempotent. Linked tokens are cancelled too.
  void cancel() noexcept {
    std::vector<std::weak_ptr<CancelToken>> children;
    {
      std::lock_guard<std::mutex> lock(mu_);
      cancelled_.store(true);
      children.swap(children_);
    }
    cv_.notify_all();
    for (auto& w : children)
      if (auto c = w.lock()) c->cancel();
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
};

TAOTOKEN_END_NAMESPACE

#endif  // TAOTOKEN_CANCEL_H
