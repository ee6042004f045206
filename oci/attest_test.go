package oci_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nix-community/go-nix/pkg/narinfo"

	"codeberg.org/provenix/provenix/attest"
	"codeberg.org/provenix/provenix/cache-push/server"
	"codeberg.org/provenix/provenix/cache-push/store/local"
	"codeberg.org/provenix/provenix/cacheclient"
	"codeberg.org/provenix/provenix/cachelayout"
	"codeberg.org/provenix/provenix/internal/testcache"
	"codeberg.org/provenix/provenix/internal/testctx"
	"codeberg.org/provenix/provenix/internal/testkey"
	"codeberg.org/provenix/provenix/internal/testnix"
	"codeberg.org/provenix/provenix/internal/testproc"
	"codeberg.org/provenix/provenix/oci"
	"codeberg.org/provenix/provenix/vsa"
)

// attested is a cache as a pusher with a VSA key leaves it: the built
// paths of the closure carry a builder's provenance, every path its
// verification summary under the published policy.
type attested struct {
	*cache
	signer  *vsa.Signer
	pubPath string
}

func newAttested(t *testing.T, ctx context.Context) *attested {
	t.Helper()
	c := newCache(t, ctx)
	builder, _ := testkey.Signer(t)
	vsaKey, _ := testkey.Signer(t)
	signer, err := vsa.NewSigner(vsa.SignerOptions{Key: vsaKey})
	if err != nil {
		t.Fatal(err)
	}
	pem, err := attest.MarshalPublicKey(signer.PublicKey())
	if err != nil {
		t.Fatal(err)
	}
	a := &attested{cache: c, signer: signer, pubPath: filepath.Join(t.TempDir(), "vsa.pub")}
	os.WriteFile(a.pubPath, pem, 0o644)
	policyDoc := []byte(`{"version":1,"policy":"trusted_builders: [builder-1]\n"}` + "\n")
	testcache.Write(t, c.dir, cachelayout.PolicyKey, policyDoc)
	testcache.Write(t, c.dir, cachelayout.VSAPublicKeyKey, pem)
	policy := vsa.Ref{URI: cachelayout.PolicyKey, Digest: vsa.DocumentDigest(policyDoc)}
	for _, p := range c.closure {
		a.summarise(t, ctx, p, builder, policy)
	}
	return a
}

// summarise signs p's summary as the pusher does (cache-push/vsa.go): a
// built path's provenance bundles are its input attestations, a
// content-addressed one is admitted by its address.
func (a *attested) summarise(t *testing.T, ctx context.Context, p string, builder *attest.Signer, policy vsa.Ref) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(a.dir, cachelayout.NarinfoKey(p)))
	if err != nil {
		t.Fatal(err)
	}
	ni, err := cacheclient.ParseNarinfo(b)
	if err != nil {
		t.Fatal(err)
	}
	narHash := [32]byte(ni.NarHash.Digest())
	sum := &vsa.Summary{
		Subjects:    []vsa.Subject{{Name: p, Digest: vsa.SHA256(narHash)}},
		ResourceURI: cachelayout.NarinfoKey(p),
		Policy:      policy,
		Result:      vsa.Passed,
	}
	if ni.CA != "" {
		sum.VerifiedLevels = []string{vsa.ContentAddressed}
	} else {
		st, err := attest.NewStatement(&attest.Build{
			DrvPath: "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-x.drv", System: "x86_64-linux", BuilderID: "builder-1",
			Installable: attest.Installable{Kind: "file", File: "closure.nix", Attr: "top"},
			Outputs:     []attest.Output{{Name: "out", Path: p, NarHash: narHash, NarSize: ni.NarSize}},
		})
		if err != nil {
			t.Fatal(err)
		}
		bundle, err := attest.Sign(ctx, st, builder)
		if err != nil {
			t.Fatal(err)
		}
		prov, _ := json.Marshal(cachelayout.Provenance{Version: cachelayout.ProvenanceVersion, StorePath: p,
			NarSHA256: hex.EncodeToString(narHash[:]), Bundles: []json.RawMessage{bundle}})
		testcache.Write(t, a.dir, cachelayout.ProvenanceKey(p), prov)
		var c bytes.Buffer
		json.Compact(&c, bundle)
		sum.InputAttestations = []vsa.Ref{{URI: cachelayout.ProvenanceKey(p) + "#/bundles/0", Digest: vsa.SHA256(sha256.Sum256(c.Bytes()))}}
		sum.VerifiedLevels = []string{vsa.BuildLevel2}
	}
	bundle, err := a.signer.Sign(ctx, sum)
	if err != nil {
		t.Fatal(err)
	}
	testcache.Write(t, a.dir, cachelayout.VSAKey(p), bundle)
}

// serveSigning serves dir with a registry that signs image summaries.
func serveSigning(t *testing.T, dir string, signer *vsa.Signer) string {
	t.Helper()
	st, err := local.New(dir)
	if err != nil {
		t.Fatal(err)
	}
	reg, err := oci.New(st, oci.Options{VSA: signer})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(server.Handler(st, server.Options{Registry: reg}))
	t.Cleanup(srv.Close)
	return host(srv.URL)
}

func cosignVerify(t *testing.T, ctx context.Context, pubPath, ref string) (string, error) {
	t.Helper()
	cosign := testproc.Cosign(t)
	// --insecure-ignore-tlog: the pusher's VSA key signs without a
	// transparency log, like the builders' keys (docs/FACTS: cosign).
	cmd := exec.CommandContext(ctx, cosign, "verify-attestation", "--key", pubPath, "--type", vsa.PredicateType,
		"--allow-http-registry", "--insecure-ignore-tlog", ref)
	cmd.Env = append(os.Environ(), "HOME="+t.TempDir(), "DOCKER_CONFIG="+t.TempDir())
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// cosign verifies the image's summary through the referrers API; the
// summary's subject is the image and it lists every path with its NAR
// hash and its summary; an image whose layer was altered gets no summary
// cosign accepts.
func TestCosignVerifiesImageVSA(t *testing.T) {
	ctx := testctx.New(t, 5*time.Minute)
	a := newAttested(t, ctx)
	srv := serveSigning(t, a.dir, a.signer)
	ref := srv + "/" + repo(a.top)
	out, err := cosignVerify(t, ctx, a.pubPath, ref)
	if err != nil {
		t.Fatalf("cosign refused the image's summary: %v\n%s", err, out)
	}
	digest := strings.TrimSpace(run(t, ctx, testproc.Crane(t), "digest", "--insecure", ref))
	// What cosign printed is the DSSE envelope; its payload is the
	// statement.
	var env struct{ Payload []byte }
	if err := json.Unmarshal([]byte(lastJSONLine(out)), &env); err != nil {
		t.Fatalf("cosign output: %v\n%s", err, out)
	}
	var st struct {
		Subject []struct {
			Name   string
			Digest map[string]string
		}
		Predicate struct {
			InputAttestations []struct{ URI string } `json:"inputAttestations"`
			VerifiedLevels    []string               `json:"verifiedLevels"`
		}
	}
	if err := json.Unmarshal(env.Payload, &st); err != nil {
		t.Fatal(err)
	}
	if len(st.Subject) != 1+len(a.closure) || "sha256:"+st.Subject[0].Digest["sha256"] != digest || st.Subject[0].Name != repo(a.top) {
		t.Fatalf("subjects %+v, want the image %s and %d paths", st.Subject, digest, len(a.closure))
	}
	uris := map[string]bool{}
	for _, in := range st.Predicate.InputAttestations {
		uris[in.URI] = true
	}
	for _, s := range st.Subject[1:] {
		ni := readNarinfo(t, a.dir, s.Name)
		if s.Digest["sha256"] != hex.EncodeToString(ni.NarHash.Digest()) {
			t.Errorf("subject %s: %v, want its NAR hash", s.Name, s.Digest)
		}
		if !uris[cachelayout.VSAKey(s.Name)] || ni.CA == "" && !uris[cachelayout.ProvenanceKey(s.Name)+"#/bundles/0"] {
			t.Errorf("%s: its summary or builder's bundle is not an input: %v", s.Name, uris)
		}
	}
	if len(st.Predicate.VerifiedLevels) != 1 || st.Predicate.VerifiedLevels[0] != vsa.BuildLevel2 {
		t.Errorf("levels %v", st.Predicate.VerifiedLevels)
	}
	// The summary was stored: a server without the key serves it.
	if out, err := cosignVerify(t, ctx, a.pubPath, host(serve(t, a.dir, nil))+"/"+repo(a.top)); err != nil {
		t.Fatalf("a server without the key: %v\n%s", err, out)
	}

	// Alter a layer: dep-a's NAR gets another file's bytes, its narinfo
	// says so (someone with write access to the store, or a bug), and its
	// layer record is gone, so the layer and the image get new digests.
	oldImage := digest
	dep := testnix.PathNamed(t, a.closure, "-closure-dep-a")
	tamper(t, a, dep)
	// A fresh server: a running one keeps an image it built for a minute.
	ref = serveSigning(t, a.dir, a.signer) + "/" + repo(a.top)
	newDigest := strings.TrimSpace(run(t, ctx, testproc.Crane(t), "digest", "--insecure", ref))
	if newDigest == oldImage {
		t.Fatalf("the altered image kept its digest %s", newDigest)
	}
	if out, err := cosignVerify(t, ctx, a.pubPath, ref); err == nil {
		t.Fatalf("cosign accepted the image with an altered layer:\n%s", out)
	} else {
		t.Logf("altered image: cosign: %s", out)
	}
	if _, err := os.Stat(filepath.Join(a.dir, cachelayout.OCIVSAKey(strings.TrimPrefix(newDigest, "sha256:")))); !os.IsNotExist(err) {
		t.Fatalf("the altered image got a summary: %v", err)
	}
	// Nor does the old image's summary, copied to the new image, pass.
	old, err := os.ReadFile(filepath.Join(a.dir, cachelayout.OCIVSAKey(strings.TrimPrefix(oldImage, "sha256:"))))
	if err != nil {
		t.Fatal(err)
	}
	testcache.Write(t, a.dir, cachelayout.OCIVSAKey(strings.TrimPrefix(newDigest, "sha256:")), old)
	if out, err := cosignVerify(t, ctx, a.pubPath, ref); err == nil {
		t.Fatalf("cosign accepted the old image's summary for the altered image:\n%s", out)
	} else {
		t.Logf("old summary on the altered image: cosign: %s", out)
	}
}

// tamper replaces the NAR of p by another one and re-describes it in its
// narinfo, leaving its summary as the pusher signed it.
func tamper(t *testing.T, a *attested, p string) {
	t.Helper()
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "bin"), 0o755)
	os.WriteFile(filepath.Join(dir, "bin", "dep-a"), []byte("#!/bin/sh\necho altered\n"), 0o755)
	nar, err := exec.Command("nix-store", "--dump", dir).Output()
	if err != nil {
		t.Fatal(err)
	}
	ni := readNarinfo(t, a.dir, p)
	testcache.PublishNAR(t, a.dir, a.sk, p, nar, cacheclient.References(ni)...)
	os.Remove(filepath.Join(a.dir, cachelayout.OCILayerKey(p)))
	if got := readNarinfo(t, a.dir, p); got.NarHash.String() == ni.NarHash.String() {
		t.Fatal("the NAR did not change")
	}
}

func readNarinfo(t *testing.T, dir, p string) *narinfo.NarInfo {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, cachelayout.NarinfoKey(p)))
	if err != nil {
		t.Fatal(err)
	}
	ni, err := cacheclient.ParseNarinfo(b)
	if err != nil {
		t.Fatal(err)
	}
	return ni
}

func lastJSONLine(out string) string {
	lines := strings.Split(strings.TrimSpace(out), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		if strings.HasPrefix(lines[i], "{") {
			return lines[i]
		}
	}
	return ""
}

// A path whose summary names another policy than the one the cache
// serves gets no image summary: the referrers index is empty, and nothing
// is signed.
func TestImageVSARefusesOtherPolicy(t *testing.T) {
	ctx := testctx.New(t, 5*time.Minute)
	a := newAttested(t, ctx)
	testcache.Write(t, a.dir, cachelayout.PolicyKey, []byte(`{"version":1,"policy":"trusted_builders: [someone-else]\n"}`+"\n"))
	srv := serveSigning(t, a.dir, a.signer)
	digest := strings.TrimSpace(run(t, ctx, testproc.Crane(t), "digest", "--insecure", srv+"/"+repo(a.top)))
	code, body := status(t, "http://"+srv+"/v2/"+repo(a.top)+"/referrers/"+digest, "", "")
	if code != http.StatusOK || !strings.Contains(body, `"manifests":[]`) {
		t.Fatalf("referrers: %d %s, want an empty index", code, body)
	}
	if _, err := os.Stat(filepath.Join(a.dir, cachelayout.OCIVSAKey(strings.TrimPrefix(digest, "sha256:")))); !os.IsNotExist(err) {
		t.Fatalf("an image summary was signed: %v", err)
	}
	if out, err := cosignVerify(t, ctx, a.pubPath, srv+"/"+repo(a.top)); err == nil {
		t.Fatalf("cosign accepted:\n%s", out)
	}
}

// TestImageVSARefusesForgedLayerRecord: a layer record in the store that
// names the digest of another tar (planted by whoever can write the
// store, not made from the NAR) gets the image no summary: the registry
// computes each layer it did not compute itself before it signs.
func TestImageVSARefusesForgedLayerRecord(t *testing.T) {
	ctx := testctx.New(t, 5*time.Minute)
	a := newAttested(t, ctx)
	p := a.closure[len(a.closure)-1]
	ni := readNarinfo(t, a.dir, p)
	forged := sha256.Sum256([]byte("another tar"))
	rec := fmt.Sprintf(`{"version":1,"storePath":%q,"narHash":%q,"digest":"sha256:%x","size":1024}`, p, ni.NarHash.String(), forged)
	testcache.Write(t, a.dir, cachelayout.OCILayerKey(p), []byte(rec))
	srv := serveSigning(t, a.dir, a.signer)
	digest := strings.TrimSpace(run(t, ctx, testproc.Crane(t), "digest", "--insecure", srv+"/"+repo(a.top)))
	code, body := status(t, "http://"+srv+"/v2/"+repo(a.top)+"/referrers/"+digest, "", "")
	if code != http.StatusOK || !strings.Contains(body, `"manifests":[]`) {
		t.Fatalf("referrers of an image with a forged layer record: %d %s, want an empty index", code, body)
	}
	if _, err := os.Stat(filepath.Join(a.dir, cachelayout.OCIVSAKey(strings.TrimPrefix(digest, "sha256:")))); !os.IsNotExist(err) {
		t.Fatalf("an image summary was signed over a forged layer digest: %v", err)
	}
}
