package cachepush

import (
	"errors"
	"fmt"
	"testing"

	"codeberg.org/provenix/provenix/queue"
)

// TestRejectedError: one type carries the reason, matches ErrRejected
// and the cause's own sentinels, and survives wrapping (queue.Permanent,
// fmt.Errorf) for errors.As.
func TestRejectedError(t *testing.T) {
	cause := fmt.Errorf("%w: out has no output", ErrOutputPath)
	err := fmt.Errorf("push: %w", queue.Permanent(rejected(ReasonOutputPath, cause)))
	if !errors.Is(err, ErrRejected) || !errors.Is(err, ErrOutputPath) || !errors.Is(err, queue.ErrPermanent) {
		t.Fatalf("%v: want ErrRejected, ErrOutputPath and ErrPermanent", err)
	}
	var re *RejectedError
	if !errors.As(err, &re) || re.Reason != ReasonOutputPath || re.Err != cause {
		t.Fatalf("errors.As: %#v", re)
	}
	if want := "result rejected (output-path): " + cause.Error(); re.Error() != want {
		t.Errorf("Error() = %q, want %q", re.Error(), want)
	}
	if errors.Is(cause, ErrRejected) {
		t.Error("the cause alone must not match ErrRejected")
	}
}
