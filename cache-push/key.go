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
	return loadKeyFile(path, "cache key", signature.LoadSecretKey)
}

// LoadPublicKey reads a Nix binary-cache public key file.
func LoadPublicKey(path string) (signature.PublicKey, error) {
	return loadKeyFile(path, "cache public key", signature.ParsePublicKey)
}

// loadKeyFile reads the key in path, one line, with parse; what names
// the key in errors.
func loadKeyFile[K any](path, what string, parse func(string) (K, error)) (K, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		var zero K
		return zero, fmt.Errorf("%s: %w", what, err)
	}
	k, err := parse(strings.TrimSpace(string(b)))
	if err != nil {
		return k, fmt.Errorf("%s %s: %w", what, path, err)
	}
	return k, nil
}
