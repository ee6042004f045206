// Package testctx is the tests' context with a timeout: one helper
// instead of a copy in every package.
package testctx

import (
	"context"
	"testing"
	"time"
)

// New is a context that ends after d, or when t ends (t.Context: before
// t's Cleanup functions run, so cleanups make their own), whichever is
// first.
func New(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), d)
	t.Cleanup(cancel)
	return ctx
}
