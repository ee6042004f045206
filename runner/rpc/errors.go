package rpc

import (
	"errors"
	"fmt"
	"io"
	"net"
	"syscall"

	"connectrpc.com/connect"
)

// Errors of forge calls form a tree under ErrForge: every *Error matches
// ErrForge and exactly one of the kinds below, and still unwraps to the
// *connect.Error it came from (connect.CodeOf works on it).
var (
	// ErrForge is the root of every error the forge answered or that kept
	// the call from reaching it.
	ErrForge = errors.New("forge")
	// ErrUnauthenticated: the forge does not know this runner's uuid and
	// token — the runner was deleted on the forge, or .runner is wrong.
	ErrUnauthenticated = errors.New("the forge does not accept this runner's credentials: the runner was deleted on the forge, or its token is wrong; register it again ('provenix runner register')")
	// ErrPermissionDenied: the forge knows the runner but refuses the call.
	ErrPermissionDenied = errors.New("the forge refused the call (permission denied)")
	// ErrRegistrationToken: Register was refused, most often because the
	// registration token is wrong, expired or was reset.
	ErrRegistrationToken = errors.New("the forge refused the registration: check the registration token (it may have been reset; copy a fresh one from the forge's runner settings)")
	// ErrUnimplemented: no such RPC at this address — a wrong instance URL,
	// Actions disabled, or a forge too old for the call.
	ErrUnimplemented = errors.New("the forge does not implement this call: check the instance URL and that Actions are enabled")
	// ErrUnavailable: transient failures went on until the retries ran out.
	ErrUnavailable = errors.New("the forge is unavailable")
	// ErrRejected: any other answer that retrying cannot change (invalid
	// argument, not found, an internal error of the forge).
	ErrRejected = errors.New("the forge rejected the call")
)

// Error is a failed forge call.
type Error struct {
	Method   string // RPC name, e.g. "FetchTask"
	Kind     error  // one of the sentinels above
	Attempts int    // how many times the call was sent
	Err      error  // the last error, usually a *connect.Error
}

func (e *Error) Error() string {
	msg := fmt.Sprintf("forge %s: %v", e.Method, e.Kind)
	if e.Attempts > 1 {
		msg += fmt.Sprintf(" (%d attempts)", e.Attempts)
	}
	return msg + ": " + e.Err.Error()
}

// Unwrap lets errors.Is match ErrForge, the kind, and the cause.
func (e *Error) Unwrap() []error { return []error{ErrForge, e.Kind, e.Err} }

// transient reports whether an attempt that failed with err may succeed
// if sent again. A cancelled parent context is never transient; the
// caller checks that first.
func transient(err error) bool {
	switch connect.CodeOf(err) {
	case connect.CodeUnavailable, // also HTTP 429, 502, 503, 504 from a proxy
		connect.CodeResourceExhausted,
		connect.CodeAborted,
		connect.CodeDeadlineExceeded: // this attempt's own timeout
		return true
	case connect.CodeUnknown, connect.CodeInternal, connect.CodeCanceled:
		// connect reports some transport failures (a reset connection, a
		// truncated body) as Unknown, Internal or even Canceled (a reset
		// read); only those are worth a retry, not the forge's own errors.
		// A cancel of the caller's own context never gets here.
		return networkError(err)
	}
	return false
}

func networkError(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) ||
		errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, syscall.ECONNREFUSED) ||
		errors.Is(err, syscall.EPIPE)
}

// kind maps a permanent error, or the last of a series of transient ones,
// to its sentinel.
func kind(method string, err error) error {
	if transient(err) {
		return ErrUnavailable
	}
	code := connect.CodeOf(err)
	if method == methodRegister {
		switch code {
		case connect.CodeUnimplemented:
			return ErrUnimplemented
		case connect.CodeInvalidArgument, connect.CodeNotFound, connect.CodeUnknown,
			connect.CodeUnauthenticated, connect.CodePermissionDenied, connect.CodeFailedPrecondition:
			// Forgejo answers InvalidArgument, Gitea a plain error
			// (Unknown) for an unknown registration token.
			return ErrRegistrationToken
		}
	}
	switch code {
	case connect.CodeUnauthenticated:
		return ErrUnauthenticated
	case connect.CodePermissionDenied:
		return ErrPermissionDenied
	case connect.CodeUnimplemented:
		return ErrUnimplemented
	}
	return ErrRejected
}
