package cacheclient_test

import (
	"bytes"
	"crypto/sha256"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nix-community/go-nix/pkg/nar"

	"codeberg.org/provenix/provenix/attest"
	"codeberg.org/provenix/provenix/cacheclient"
)

// TestVerifyLocal: a path of a (chroot) store and a NAR file are checked
// against bundles as a cache entry is, by the NAR's digest and size.
func TestVerifyLocal(t *testing.T) {
	alice, bob := newBuilder(t, "alice"), newBuilder(t, "bob")
	v, err := attest.NewVerifier(nil, attest.WithKeys(attest.TrustedBuilder{ID: alice.id, PublicKey: alice.signer.GetPublicKey()}))
	if err != nil {
		t.Fatal(err)
	}
	storeRoot := t.TempDir()
	sp := randomStorePath("hello")
	real := filepath.Join(storeRoot, sp)
	if err := os.MkdirAll(real, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(real, "greeting"), []byte("hello\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	var narBuf bytes.Buffer
	if err := nar.DumpPath(&narBuf, real); err != nil {
		t.Fatal(err)
	}
	narFile := filepath.Join(t.TempDir(), "hello.nar")
	if err := os.WriteFile(narFile, narBuf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	out := attest.Output{Name: "out", Path: sp, NarHash: sha256.Sum256(narBuf.Bytes()), NarSize: uint64(narBuf.Len())}
	good := alice.attestOutput(t, out)
	o := cacheclient.VerifyOptions{Verifier: v}

	for name, l := range map[string]cacheclient.Local{
		"store path": {StorePath: sp, StoreRoot: storeRoot},
		"NAR file":   {StorePath: sp, NARFile: narFile},
	} {
		t.Run(name, func(t *testing.T) {
			rep, err := cacheclient.VerifyLocal(l, [][]byte{good}, o)
			if err != nil {
				t.Fatal(err)
			}
			if !rep.Verified || rep.NarSize != out.NarSize || rep.Quorum != 1 || rep.VerifiedAttestations() != 1 {
				t.Fatalf("attested by the trusted builder: %+v", rep)
			}
			// An untrusted builder's bundle, alone, does not verify.
			if rep, err = cacheclient.VerifyLocal(l, [][]byte{bob.attestOutput(t, out)}, o); err != nil || rep.Verified {
				t.Fatalf("untrusted builder: %+v, %v", rep, err)
			}
			// Two bundles of one builder are not a quorum of two.
			o2 := o
			o2.Quorum = 2
			if rep, err = cacheclient.VerifyLocal(l, [][]byte{good, good}, o2); err != nil || rep.Verified || !strings.Contains(rep.Reason, "quorum not met") {
				t.Fatalf("quorum 2 of one builder: %+v, %v", rep, err)
			}
		})
	}

	// Other bytes than the attested ones: a verdict, not an error.
	if err := os.WriteFile(narFile, append(narBuf.Bytes(), 0), 0o644); err != nil {
		t.Fatal(err)
	}
	rep, err := cacheclient.VerifyLocal(cacheclient.Local{StorePath: sp, NARFile: narFile}, [][]byte{good}, o)
	if err != nil || rep.Verified || !strings.Contains(rep.Reason, "digest mismatch") {
		t.Fatalf("altered NAR: %+v, %v", rep, err)
	}
	// What cannot be read is an error.
	if _, err := cacheclient.VerifyLocal(cacheclient.Local{StorePath: sp, NARFile: narFile + ".missing"}, [][]byte{good}, o); err == nil {
		t.Fatal("a missing NAR file gave a verdict")
	}
	if _, err := cacheclient.VerifyLocal(cacheclient.Local{StorePath: sp + "-missing", StoreRoot: storeRoot}, [][]byte{good}, o); err == nil {
		t.Fatal("a missing store path gave a verdict")
	}
}
