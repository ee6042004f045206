// Package testcache writes real store paths of the host's Nix store into a
// binary cache directory the way `nix copy --to file://DIR?compression=zstd`
// would: NAR, narinfo with the path's content address, signed with a cache
// key. Tests use it for paths no Provenix builder publishes (yet), such as
// the sources of a closure.
package testcache

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"testing"

	"github.com/klauspost/compress/zstd"
	"github.com/nix-community/go-nix/pkg/narinfo"
	"github.com/nix-community/go-nix/pkg/narinfo/signature"
	"github.com/nix-community/go-nix/pkg/nixbase32"
	"github.com/nix-community/go-nix/pkg/nixhash"

	"codeberg.org/provenix/provenix/cachelayout"
)

// pathInfo is what is read from `nix path-info --json` (Nix ≤ 2.18 prints
// an array, 2.19+ an object keyed by path: both are accepted).
type pathInfo struct {
	Path       string   `json:"path"`
	NarSize    uint64   `json:"narSize"`
	References []string `json:"references"`
	Deriver    string   `json:"deriver"`
	CA         string   `json:"ca"`
}

// Info returns the registration of storePath in the host's store.
func Info(t testing.TB, ctx context.Context, storePath string) pathInfo {
	t.Helper()
	out, err := exec.CommandContext(ctx, "nix", "--extra-experimental-features", "nix-command", "path-info", "--json", storePath).Output()
	if err != nil {
		t.Fatalf("nix path-info %s: %v", storePath, err)
	}
	var arr []pathInfo
	if json.Unmarshal(out, &arr) == nil && len(arr) == 1 {
		return arr[0]
	}
	var obj map[string]pathInfo
	if err := json.Unmarshal(out, &obj); err != nil || len(obj) != 1 {
		t.Fatalf("nix path-info --json %s: %v\n%s", storePath, err, out)
	}
	for p, i := range obj {
		i.Path = p
		return i
	}
	panic("unreachable")
}

// Publish writes storePath (from the host's store) into the cache
// directory dir: nar/<filehash>.nar.zst and <hash>.narinfo, with the CA
// the store registered, signed with sk. It returns the narinfo.
func Publish(t testing.TB, ctx context.Context, dir string, sk signature.SecretKey, storePath string) *narinfo.NarInfo {
	t.Helper()
	info := Info(t, ctx, storePath)
	narBytes, err := exec.CommandContext(ctx, "nix-store", "--dump", storePath).Output()
	if err != nil {
		t.Fatalf("nix-store --dump %s: %v", storePath, err)
	}
	if info.NarSize != uint64(len(narBytes)) {
		t.Fatalf("%s: nix says %d bytes, the dump has %d", storePath, info.NarSize, len(narBytes))
	}
	return publish(t, dir, sk, storePath, narBytes, info)
}

// PublishNAR writes narBytes into the cache directory dir as the NAR of
// storePath, an input-addressed path that need not exist anywhere, with a
// narinfo listing refs (absolute store paths), signed with sk.
func PublishNAR(t testing.TB, dir string, sk signature.SecretKey, storePath string, narBytes []byte, refs ...string) *narinfo.NarInfo {
	t.Helper()
	return publish(t, dir, sk, storePath, narBytes, pathInfo{References: refs})
}

// PublishZstd is PublishNAR for a NAR already compressed (zst), written
// as it is.
func PublishZstd(t testing.TB, dir string, sk signature.SecretKey, storePath string, narBytes, zst []byte, refs ...string) *narinfo.NarInfo {
	t.Helper()
	return publishZstd(t, dir, sk, storePath, narBytes, zst, pathInfo{References: refs})
}

func publish(t testing.TB, dir string, sk signature.SecretKey, storePath string, narBytes []byte, info pathInfo) *narinfo.NarInfo {
	t.Helper()
	var zbuf bytes.Buffer
	zw, err := zstd.NewWriter(&zbuf)
	if err != nil {
		t.Fatal(err)
	}
	zw.Write(narBytes)
	zw.Close()
	return publishZstd(t, dir, sk, storePath, narBytes, zbuf.Bytes(), info)
}

func publishZstd(t testing.TB, dir string, sk signature.SecretKey, storePath string, narBytes, zst []byte, info pathInfo) *narinfo.NarInfo {
	t.Helper()
	nh, fh := sha256.Sum256(narBytes), sha256.Sum256(zst)
	ni := &narinfo.NarInfo{
		StorePath:   storePath,
		URL:         cachelayout.NARKey(nixbase32.EncodeToString(fh[:])),
		Compression: "zstd",
		FileHash:    nixhash.MustNewHashWithEncoding(nixhash.SHA256, fh[:], nixhash.NixBase32, true),
		FileSize:    uint64(len(zst)),
		NarHash:     nixhash.MustNewHashWithEncoding(nixhash.SHA256, nh[:], nixhash.NixBase32, true),
		NarSize:     uint64(len(narBytes)),
		CA:          info.CA,
	}
	if info.Deriver != "" {
		ni.Deriver = path.Base(info.Deriver)
	}
	for _, r := range info.References {
		ni.References = append(ni.References, path.Base(r))
	}
	Sign(t, ni, sk)
	Write(t, dir, ni.URL, zst)
	Write(t, dir, cachelayout.NarinfoKey(storePath), []byte(ni.String()))
	return ni
}

// PublishProvenance writes the provenance sidecar of storePath, whose NAR
// is narBytes, holding bundles.
func PublishProvenance(t testing.TB, dir, storePath string, narBytes []byte, bundles ...[]byte) {
	t.Helper()
	sum := sha256.Sum256(narBytes)
	p := cachelayout.Provenance{Version: cachelayout.ProvenanceVersion, StorePath: storePath, NarSHA256: hex.EncodeToString(sum[:])}
	for _, b := range bundles {
		p.Bundles = append(p.Bundles, b)
	}
	b, err := json.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	Write(t, dir, cachelayout.ProvenanceKey(storePath), b)
}

// Sign replaces ni's signatures with one by sk.
func Sign(t testing.TB, ni *narinfo.NarInfo, sk signature.SecretKey) {
	t.Helper()
	sig, err := sk.Sign(rand.Reader, ni.Fingerprint())
	if err != nil {
		t.Fatal(err)
	}
	ni.Signatures = []signature.Signature{sig}
}

// Write stores an object under key in the cache directory dir.
func Write(t testing.TB, dir, key string, b []byte) {
	t.Helper()
	p := filepath.Join(dir, filepath.FromSlash(key))
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(fmt.Errorf("write %s: %w", key, err))
	}
}

// LoadKey reads a Nix secret key file ("name:base64").
func LoadKey(t testing.TB, file string) signature.SecretKey {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	sk, err := signature.LoadSecretKey(string(bytes.TrimSpace(b)))
	if err != nil {
		t.Fatal(err)
	}
	return sk
}
