package attest

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
)

// GenerateKeyFiles writes a new builder key to path (PKCS#8 PEM, 0600) and
// its public key to path+".pub". It never overwrites: replacing a builder's
// key silently would orphan every trust decision made about the old one.
func GenerateKeyFiles(path string) (*Signer, error) {
	k, err := GenerateKey()
	if err != nil {
		return nil, fmt.Errorf("attest: generate key: %w", err)
	}
	priv, err := MarshalPrivateKey(k)
	if err != nil {
		return nil, err
	}
	pub, err := MarshalPublicKey(k.Public())
	if err != nil {
		return nil, err
	}
	if err := WriteNewFile(path+".pub", pub, 0o644); err != nil {
		return nil, err
	}
	if err := WriteNewFile(path, priv, 0o600); err != nil {
		os.Remove(path + ".pub")
		return nil, err
	}
	return NewSigner(k)
}

// WriteNewFile creates path with data and perm, failing if it exists, and
// syncs it so a key reported as written survives a crash.
func WriteNewFile(path string, data []byte, perm os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("%s already exists; refusing to overwrite it", path)
	}
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		os.Remove(path)
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		os.Remove(path)
		return err
	}
	return f.Close()
}
