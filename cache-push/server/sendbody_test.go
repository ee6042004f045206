package server

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
)

// writerToBody writes its content itself, as a chunked NAR does.
type writerToBody struct{ s string }

func (b writerToBody) Read([]byte) (int, error) { return 0, errors.New("Read called, want WriteTo") }
func (b writerToBody) WriteTo(w io.Writer) (int64, error) {
	// Through ReadFrom when w has it, as io.Copy does with a file.
	return io.Copy(w, &io.LimitedReader{R: strings.NewReader(b.s), N: int64(len(b.s))})
}

// TestSendBodyExact: a body that writes itself still sends exactly the
// size promised in Content-Length: a longer one is cut (and fails), a
// shorter one fails.
func TestSendBodyExact(t *testing.T) {
	for _, tt := range []struct {
		body string
		size int64
		ok   bool
	}{{"0123456789", 10, true}, {"0123456789", 4, false}, {"0123", 10, false}} {
		var out bytes.Buffer
		n, err := sendBody(&out, writerToBody{tt.body}, tt.size)
		if (err == nil) != tt.ok || n != int64(out.Len()) || n > tt.size {
			t.Errorf("body %q, size %d: sent %d (%q), %v", tt.body, tt.size, n, out.String(), err)
		}
	}
}
