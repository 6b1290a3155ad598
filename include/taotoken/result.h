#ifndef TAOTOKEN_RESULT_H
#define TAOTOKEN_RESULT_H

/// @file
/// `Result<T>`: a value or an `Error`, in the style of `std::expected`.

#include <type_traits>
#include <utility>
#include <variant>

#include "taotoken/error.h"
#include "taotoken/version.h"

TAOTOKEN_BEGIN_NAMESPACE

/// Either a `T` or an `Error`.
///
/// Check `ok()` (or `if (result)`) and read `error()`, or call `value()`,
/// which throws the `Error` when there is no value. The library never throws
/// from a call that returns a `Result`; exceptions appear only when you ask
/// for them with `value()`.
///
/// Thread safety: like any value type; distinct objects may be used from
/// distinct threads, one object needs external synchronisation for writes.
template <typename T>
class Result {
 public:
  static_assert(!std::is_same_v<T, Error>, "Result<Error> is not meaningful");

  /// A successful result.
  Result(T value) : v_(std::in_place_index<0>, std::move(value)) {}  // NOLINT(google-explicit-constructor)
  /// A failed result.
  Result(Error error) : v_(std::in_place_index<1>, std::move(error)) {}  // NOLINT(google-explicit-constructor)

  /// True when the call succeeded.
  bool ok() const noexcept { return v_.index() == 0; }
  explicit operator bool() const noexcept { return ok(); }

  /// The value; throws the `Error` when the call failed.
  T& value() & { check(); return std::get<0>(v_); }
  const T& value() const& { check(); return std::get<0>(v_); }
  T&& value() && { check(); return std::get<0>(std::move(v_)); }

  /// The value without a check. Precondition: `ok()`.
  T& operator*() & noexcept { return *std::get_if<0>(&v_); }
  const T& operator*() const& noexcept { return *std::get_if<0>(&v_); }
  T* operator->() noexcept { return std::get_if<0>(&v_); }
  const T* operator->() const noexcept { return std::get_if<0>(&v_); }

  /// The error. Precondition: `!ok()` (checked: throws std::logic_error).
  const Error& error() const& {
    if (ok()) throw std::logic_error("taotoken::Result::error() called on a successful result");
    return std::get<1>(v_);
  }
  Error& error() & {
    if (ok()) throw std::logic_error("taotoken::Result::error() called on a successful result");
    return std::get<1>(v_);
  }

 private:
  void check() const {
    if (!ok()) throw std::get<1>(v_);
  }
  std::variant<T, Error> v_;
};

TAOTOKEN_END_NAMESPACE

#endif  // TAOTOKEN_RESULT_H
