package policy

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"codeberg.org/provenix/provenix/attest"
	"codeberg.org/provenix/provenix/cachelayout"
)

// TestDocument: the published policy carries the file's text and the key
// its builder's key: path names, so swapping the key file behind an
// unchanged policy file changes the document (and the digest VSAs name);
// the same policy gives the same bytes.
func TestDocument(t *testing.T) {
	dir := t.TempDir()
	writeKey := func() []byte {
		k, err := attest.GenerateKey()
		if err != nil {
			t.Fatal(err)
		}
		pub, _ := attest.MarshalPublicKey(k.Public())
		if err := os.WriteFile(filepath.Join(dir, "b.pub"), pub, 0o644); err != nil {
			t.Fatal(err)
		}
		return pub
	}
	src := []byte("builders:\n  - {id: b, key: b.pub}\n  - id: k\n    identity: {issuer: https://forge.example/api/actions, san: x}\n")
	doc := func() []byte {
		p, err := Parse(src, dir)
		if err != nil {
			t.Fatal(err)
		}
		d, err := p.Document()
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	pub := writeKey()
	first := doc()
	if again := doc(); !bytes.Equal(first, again) {
		t.Fatalf("the same policy gave two documents:\n%s\n%s", first, again)
	}
	var d cachelayout.PolicyDocument
	if err := json.Unmarshal(first, &d); err != nil {
		t.Fatal(err)
	}
	if d.Version != cachelayout.PolicyDocumentVersion || d.Policy != string(src) || d.Keys["b"] != string(pub) || len(d.Keys) != 1 {
		t.Fatalf("document %+v", d)
	}
	writeKey()
	if bytes.Equal(first, doc()) {
		t.Fatal("another key behind the same policy file gave the same document")
	}
}
