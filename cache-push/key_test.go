package cachepush

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nix-community/go-nix/pkg/narinfo/signature"
)

// TestNixGeneratedKeys: a key pair made by Nix's own
// nix-store --generate-binary-cache-key loads here, and what we sign with
// its secret key verifies with its public key; and the reverse for ours.
func TestNixGeneratedKeys(t *testing.T) {
	nixStore, err := exec.LookPath("nix-store")
	if err != nil {
		t.Fatal("nix-store is required (apt-get install nix-bin)")
	}
	dir := t.TempDir()
	sk, pk := filepath.Join(dir, "nix.sec"), filepath.Join(dir, "nix.pub")
	if out, err := exec.Command(nixStore, "--generate-binary-cache-key", "nix-made-1", sk, pk).CombinedOutput(); err != nil {
		t.Fatalf("nix-store --generate-binary-cache-key: %v\n%s", err, out)
	}
	secret, err := LoadKey(sk)
	if err != nil {
		t.Fatal(err)
	}
	public, err := LoadPublicKey(pk)
	if err != nil {
		t.Fatal(err)
	}
	const fp = "1;/nix/store/pqxlcjhmikcyjjir05zmvq9gkcc899fb-provenix-hello;sha256:0000000000000000000000000000000000000000000000000000;960;"
	sig, err := secret.Sign(nil, fp)
	if err != nil {
		t.Fatal(err)
	}
	if !public.Verify(fp, sig) || !strings.HasPrefix(sig.String(), "nix-made-1:") {
		t.Fatalf("signature %s does not verify with Nix's public key", sig)
	}
	// Ours: the public half is what Nix derives from the secret half.
	ourPub, err := GenerateKeyFiles("ours-1", filepath.Join(dir, "ours"))
	if err != nil {
		t.Fatal(err)
	}
	ourSecret, err := LoadKey(filepath.Join(dir, "ours"))
	if err != nil {
		t.Fatal(err)
	}
	if ourSecret.ToPublicKey().String() != ourPub.String() {
		t.Fatal("generated public key does not match the secret key")
	}
	if _, err := signature.ParsePublicKey(ourPub.String()); err != nil {
		t.Fatal(err)
	}
	if _, err := GenerateKeyFiles("ours-1", filepath.Join(dir, "ours")); err == nil {
		t.Fatal("GenerateKeyFiles overwrote an existing key")
	}
}
