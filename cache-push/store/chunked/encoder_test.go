package chunked_test

import (
	"bytes"
	"errors"
	"io"
	"testing"

	"github.com/klauspost/compress/zstd"

	"codeberg.org/provenix/provenix/cache-push/store/chunked"
)

func encodeNAR(t *testing.T, s *chunked.Store, w io.Writer, nar []byte) error {
	t.Helper()
	enc, err := s.NAREncoder(w)
	if err != nil {
		t.Fatal(err)
	}
	_, werr := enc.Write(nar)
	return errors.Join(werr, enc.Close())
}

// TestEncoderDeterministic: chunks compressed on several cores at once
// come out in order, and the same NAR gives the same bytes every time
// (else equal chunks would not share a key).
func TestEncoderDeterministic(t *testing.T) {
	s := wrap(t, newLocal(t), chunked.Options{})
	nar := version(8<<20, nil)
	var outs [3]bytes.Buffer
	for i := range outs {
		if err := encodeNAR(t, s, &outs[i], nar); err != nil {
			t.Fatal(err)
		}
	}
	if !bytes.Equal(outs[0].Bytes(), outs[1].Bytes()) || !bytes.Equal(outs[0].Bytes(), outs[2].Bytes()) {
		t.Error("the same NAR compressed to different bytes")
	}
	d, _ := zstd.NewReader(bytes.NewReader(outs[0].Bytes()))
	defer d.Close()
	if got, err := io.ReadAll(d); err != nil || !bytes.Equal(got, nar) {
		t.Errorf("does not decompress to the NAR (%d of %d bytes): %v", len(got), len(nar), err)
	}
}

// TestEncoderWriteFails: a failing destination stops the encoder, and
// its error comes back from Write or Close.
func TestEncoderWriteFails(t *testing.T) {
	errFull := errors.New("disk full")
	pr, pw := io.Pipe()
	pr.CloseWithError(errFull) // every write fails
	s := wrap(t, newLocal(t), chunked.Options{})
	if err := encodeNAR(t, s, pw, version(8<<20, nil)); !errors.Is(err, errFull) {
		t.Errorf("encoding into a failing writer: %v, want %v", err, errFull)
	}
}
