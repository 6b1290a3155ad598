#ifndef TAOTOKEN_TAOTOKEN_H
#define TAOTOKEN_TAOTOKEN_H

/// @file
/// Everything of the core library in one include.

#include "taotoken/cancel.h"
#include "taotoken/chat.h"
#include "taotoken/client.h"
#include "taotoken/error.h"
#include "taotoken/options.h"
#include "taotoken/result.h"
#include "taotoken/retry.h"
#include "taotoken/stream.h"
#include "taotoken/version.h"

#endif  // TAOTOKEN_TAOTOKEN_H
