package cachepush

import (
	"crypto/rand"
	"fmt"
	"os"
	"strings"

	"github.com/nix-community/go-nix/pkg/narinfo/signature"

	"codeberg.org/provenix/provenix/attest"
)

// GenerateKeyFiles writes a new Nix binary-cache key pair in Nix's own
// "name:base64" format, as nix-store --generate-binary-cache-key does:
// the secret key to path (0600), the public key to path+".pub".
func GenerateKeyFiles(name, path string) (signature.PublicKey, error) {
	if name == "" || strings.ContainsAny(name, ": \n") {
		return signature.PublicKey{}, fmt.Errorf("cache key name %q: must be non-empty, without ':' or white space", name)
	}
	sk, pk, err := signature.GenerateKeypair(name, rand.Reader)
	if err != nil {
		return pk, fmt.Errorf("generate cache key: %w", err)
	}
	if err := attest.WriteNewFile(path+".pub", []byte(pk.String()+"\n"), 0o644); err != nil {
		return pk, err
	}
	if err := attest.WriteNewFile(path, []byte(sk.String()+"\n"), 0o600); err != nil {
		os.Remove(path + ".pub")
		return pk, err
	}
	return pk, nil
}

// LoadKey reads a Nix binary-cache secret key file.
func LoadKey(path string) (signature.SecretKey, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return signature.SecretKey{}, fmt.Errorf("cache key: %w", err)
	}
	sk, err := signature.LoadSecretKey(strings.TrimSpace(string(b)))
	if err != nil {
		return sk, fmt.Errorf("cache key %s: %w", path, err)
	}
	return sk, nil
}

// LoadPublicKey reads a Nix binary-cache public key file.
func LoadPublicKey(path string) (signature.PublicKey, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return signature.PublicKey{}, fmt.Errorf("cache public key: %w", err)
	}
	pk, err := signature.ParsePublicKey(strings.TrimSpace(string(b)))
	if err != nil {
		return pk, fmt.Errorf("cache public key %s: %w", path, err)
	}
	return pk, nil
}
