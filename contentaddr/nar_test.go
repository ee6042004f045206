package contentaddr

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"io"
	"slices"
	"testing"
	"testing/iotest"

	"github.com/nix-community/go-nix/pkg/nar"
)

// narOf serialises one regular file, or (dir) a directory holding it.
func narOf(t *testing.T, content string, exec, dir bool) []byte {
	t.Helper()
	var b bytes.Buffer
	w, err := nar.NewWriter(&b)
	if err != nil {
		t.Fatal(err)
	}
	p := "/"
	if dir {
		if err := w.WriteHeader(&nar.Header{Path: "/", Type: nar.TypeDirectory}); err != nil {
			t.Fatal(err)
		}
		p = "/f"
	}
	if err := w.WriteHeader(&nar.Header{Path: p, Type: nar.TypeRegular, Size: int64(len(content)), Executable: exec}); err != nil {
		t.Fatal(err)
	}
	if _, err := io.WriteString(w, content); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func TestCheckNAR(t *testing.T) {
	const content = "hello, world\n"
	file, exe, dir := narOf(t, content, false, false), narOf(t, content, true, false), narOf(t, content, false, true)
	flat := CA{Method: Flat, Hash: sha256.Sum256([]byte(content))}
	text := CA{Method: Text, Hash: flat.Hash}
	rec := CA{Method: Recursive, Hash: sha256.Sum256(dir)}
	other := flat
	other.Hash[0] ^= 1
	for _, tc := range []struct {
		what string
		c    CA
		nar  []byte
		ok   bool
	}{
		{"flat file", flat, file, true},
		{"text file", text, file, true},
		// Nix makes no text file executable: a cache that took one
		// would serve what no honest builder made, and refuse theirs.
		{"text executable file", text, exe, false},
		// Bytes after the NAR's end: the parser stops before them, the
		// cache would hash them, a client would not.
		{"flat file and more", flat, append(slices.Clone(file), make([]byte, 8)...), false},
		{"text file and more", text, append(slices.Clone(file), 'x'), false},
		{"recursive directory", rec, dir, true},
		{"flat executable file", flat, exe, false},
		{"flat directory", flat, dir, false},
		{"flat other hash", other, file, false},
		// Cut into the file's padding. (go-nix's reader does not read
		// the NAR's last ")": callers check the NAR's hash as well.)
		{"flat truncated NAR", flat, file[:len(file)-24], false},
		{"flat not a NAR", flat, []byte(content), false},
		{"recursive other NAR", rec, file, false},
	} {
		// One byte at a time: the verdict must not depend on how the
		// stream is cut.
		err := tc.c.CheckNAR(iotest.OneByteReader(bytes.NewReader(tc.nar)), "/nix/store/x")
		if tc.ok && err != nil {
			t.Errorf("%s: %v", tc.what, err)
		}
		if !tc.ok && !errors.Is(err, ErrContentMismatch) {
			t.Errorf("%s: %v, want ErrContentMismatch", tc.what, err)
		}
	}
}

// TestNARCheckerClose: Close gives the same verdict every time, and a
// NAR closed before its end is a mismatch, without leaking the parser.
func TestNARCheckerClose(t *testing.T) {
	const content = "abc"
	n := narOf(t, content, false, false)
	c := CA{Method: Flat, Hash: sha256.Sum256([]byte(content))}
	k := c.NewNARChecker("/nix/store/x")
	k.Write(n[:10])
	first := k.Close()
	if !errors.Is(first, ErrContentMismatch) || k.Close() != first {
		t.Fatalf("half a NAR: %v then %v", first, k.Close())
	}
	// A read error is returned as is.
	boom := errors.New("boom")
	if err := c.CheckNAR(iotest.ErrReader(boom), "/nix/store/x"); err != boom {
		t.Fatalf("read error: %v", err)
	}
}
