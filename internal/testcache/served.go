package testcache

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"net/http/httptest"
	"testing"

	"github.com/nix-community/go-nix/pkg/narinfo/signature"
	"github.com/nix-community/go-nix/pkg/nixbase32"

	"codeberg.org/provenix/provenix/attest"
	"codeberg.org/provenix/provenix/cache-push/server"
	"codeberg.org/provenix/provenix/cache-push/store/local"
)

// Served is a real binary cache for a test: a fresh directory served over
// HTTP by the project's cache server (cache-push/server over a local
// store), with a cache signing key of its own. Its fields are read-only.
type Served struct {
	Dir       string
	URL       string // http://127.0.0.1:<port>, no trailing slash
	SecretKey signature.SecretKey
	PublicKey signature.PublicKey
}

// Serve starts a Served cache that stops when the test ends.
func Serve(t testing.TB) *Served {
	t.Helper()
	dir := t.TempDir()
	st, err := local.New(dir)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(server.Handler(st, server.Options{}))
	t.Cleanup(srv.Close)
	sk, pk, err := signature.GenerateKeypair("test-cache-1", rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return &Served{Dir: dir, URL: srv.URL, SecretKey: sk, PublicKey: pk}
}

// StorePath is a valid store path named name, unique to this call.
func StorePath(name string) string {
	b := make([]byte, 20)
	rand.Read(b)
	return "/nix/store/" + nixbase32.EncodeToString(b) + "-" + name
}

// PublishAttested publishes in c a new store path named name, with a
// made-up NAR, its narinfo signed with c's key, and its provenance: an
// attestation by builderID, signed by signer, that it is the output "out"
// of name.drv built from name.nix -A name. It returns the store path.
func (c *Served) PublishAttested(t testing.TB, ctx context.Context, name, builderID string, signer *attest.Signer) string {
	t.Helper()
	sp := StorePath(name)
	narBytes := []byte("the NAR of " + sp)
	PublishNAR(t, c.Dir, c.SecretKey, sp, narBytes)
	st, err := attest.NewStatement(&attest.Build{
		DrvPath: "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-" + name + ".drv", System: "x86_64-linux", BuilderID: builderID,
		Installable: attest.Installable{Kind: "file", File: name + ".nix", Attr: name},
		Outputs:     []attest.Output{{Name: "out", Path: sp, NarHash: sha256.Sum256(narBytes), NarSize: uint64(len(narBytes))}},
	})
	if err != nil {
		t.Fatal(err)
	}
	bundle, err := attest.Sign(ctx, st, signer)
	if err != nil {
		t.Fatal(err)
	}
	PublishProvenance(t, c.Dir, sp, narBytes, bundle)
	return sp
}
