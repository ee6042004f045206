package oci_test

import (
	"archive/tar"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/klauspost/compress/zstd"
	"github.com/nix-community/go-nix/pkg/narinfo/signature"

	"codeberg.org/provenix/provenix/cache-push/server"
	"codeberg.org/provenix/provenix/cache-push/store/local"
	"codeberg.org/provenix/provenix/cachelayout"
	"codeberg.org/provenix/provenix/internal/testcache"
	"codeberg.org/provenix/provenix/internal/testctx"
	"codeberg.org/provenix/provenix/internal/testnix"
	"codeberg.org/provenix/provenix/internal/testproc"
	"codeberg.org/provenix/provenix/oci"
)

// cache is a real binary cache directory holding a real closure, which
// tests serve with one or more servers.
type cache struct {
	dir     string
	sk      signature.SecretKey
	top     string
	closure []string
	message string
}

// newCache builds examples/closure.nix's top with a unique message and
// publishes its whole closure into a fresh cache directory.
func newCache(t *testing.T, ctx context.Context) *cache {
	t.Helper()
	c := &cache{dir: t.TempDir(), message: "oci-" + t.Name() + "-" + time.Now().Format(time.RFC3339Nano)}
	c.top, c.closure = testnix.BuildClosure(t, ctx, c.message)
	if len(c.closure) < 5 {
		t.Fatalf("closure of %s: %v, want a multi-path closure", c.top, c.closure)
	}
	var err error
	if c.sk, _, err = signature.GenerateKeypair("test-cache-1", rand.Reader); err != nil {
		t.Fatal(err)
	}
	for _, p := range c.closure {
		testcache.Publish(t, ctx, c.dir, c.sk, p)
	}
	return c
}

// serve starts a cache server with the registry over dir; readers, when
// set, are required.
func serve(t testing.TB, dir string, readers server.Readers) string {
	t.Helper()
	st, err := local.New(dir)
	if err != nil {
		t.Fatal(err)
	}
	reg, err := oci.New(st, oci.Options{})
	if err != nil {
		t.Fatal(err)
	}
	var h http.Handler = server.Handler(st, server.Options{Registry: reg})
	if readers != nil {
		h = server.RequireReaders(h, readers, "provenix cache")
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv.URL
}

func host(url string) string { return strings.TrimPrefix(url, "http://") }

// repo is the repository name of a store path.
func repo(p string) string { return "nix/" + filepath.Base(p) }

func run(t *testing.T, ctx context.Context, name string, args ...string) string {
	t.Helper()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// ociLayout reads an OCI image layout directory holding one image: its
// manifest digest and the paths of its layer blobs.
func ociLayout(t *testing.T, dir string) (v1.Hash, *v1.Manifest, []string) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "index.json"))
	if err != nil {
		t.Fatal(err)
	}
	var idx v1.IndexManifest
	if err := json.Unmarshal(b, &idx); err != nil || len(idx.Manifests) != 1 {
		t.Fatalf("%s/index.json: %v %s", dir, err, b)
	}
	d := idx.Manifests[0].Digest
	blob := func(h v1.Hash) string { return filepath.Join(dir, "blobs", h.Algorithm, h.Hex) }
	mb, err := os.ReadFile(blob(d))
	if err != nil {
		t.Fatal(err)
	}
	var m v1.Manifest
	if err := json.Unmarshal(mb, &m); err != nil {
		t.Fatal(err)
	}
	var layers []string
	for _, l := range m.Layers {
		layers = append(layers, blob(l.Digest))
	}
	return d, &m, layers
}

// entry is what a file tree holds at one name.
type entry struct {
	kind string // dir, file, exec, symlink
	data string // sha256 of a file's content, a symlink's target
}

// treeOf reads the tree of a store path from the host's store.
func treeOf(t *testing.T, storePath string) map[string]entry {
	t.Helper()
	tree := map[string]entry{}
	err := filepath.WalkDir(storePath, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		name := strings.TrimPrefix(p, "/")
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		switch {
		case fi.Mode()&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			tree[name] = entry{"symlink", target}
		case fi.IsDir():
			tree[name] = entry{kind: "dir"}
		default:
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			sum := sha256.Sum256(b)
			kind := "file"
			if fi.Mode()&0o100 != 0 {
				kind = "exec"
			}
			tree[name] = entry{kind, hex.EncodeToString(sum[:])}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return tree
}

// treeOfLayer reads a tar layer; the nix/ and nix/store/ directories are
// left out. It returns the store path the layer holds.
func treeOfLayer(t *testing.T, file string) (string, map[string]entry) {
	t.Helper()
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tree := map[string]entry{}
	var root string
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		name := strings.TrimSuffix(h.Name, "/")
		if name == "nix" || name == "nix/store" {
			continue
		}
		if root == "" {
			root = "/" + name
		}
		switch h.Typeflag {
		case tar.TypeDir:
			tree[name] = entry{kind: "dir"}
		case tar.TypeSymlink:
			tree[name] = entry{"symlink", h.Linkname}
		case tar.TypeReg:
			b, err := io.ReadAll(tr)
			if err != nil {
				t.Fatal(err)
			}
			sum := sha256.Sum256(b)
			kind := "file"
			if h.Mode&0o100 != 0 {
				kind = "exec"
			}
			tree[name] = entry{kind, hex.EncodeToString(sum[:])}
		default:
			t.Fatalf("%s: %s has type %c", file, h.Name, h.Typeflag)
		}
	}
	return root, tree
}

// checkLayers asserts that the layers hold exactly the closure's paths,
// one each, with the host store's contents.
func checkLayers(t *testing.T, c *cache, layers []string) {
	t.Helper()
	var roots []string
	for _, l := range layers {
		root, tree := treeOfLayer(t, l)
		if !slices.Contains(c.closure, root) {
			t.Fatalf("layer %s holds %s, not a path of the closure", l, root)
		}
		want := treeOf(t, root)
		if fmt.Sprint(tree) != fmt.Sprint(want) {
			t.Fatalf("layer of %s differs from the store:\n layer %v\n store %v", root, tree, want)
		}
		roots = append(roots, root)
	}
	slices.Sort(roots)
	want := slices.Sorted(slices.Values(c.closure))
	if !slices.Equal(roots, want) {
		t.Fatalf("layers hold %v, want the closure %v", roots, want)
	}
}

// skopeo and crane pull the image of a real closure's top; each layer is
// one path of the closure with the store's contents; two servers of the
// same cache, and a server of a copy without the layer records, serve the
// same digests.
func TestPullRealClients(t *testing.T) {
	ctx := testctx.New(t, 5*time.Minute)
	c := newCache(t, ctx)
	craneBin := testproc.Crane(t)
	skopeo := testproc.Tool(t, "skopeo", "apt-get install skopeo")
	url1 := serve(t, c.dir, nil)
	ref := host(url1) + "/" + repo(c.top)

	skDir := filepath.Join(t.TempDir(), "skopeo")
	// Keep the layers as served (skopeo would gzip them) so that the
	// image keeps its digest.
	run(t, ctx, skopeo, "copy", "--src-tls-verify=false", "--dest-oci-accept-uncompressed-layers", "--preserve-digests", "docker://"+ref, "oci:"+skDir)
	d1, m1, layers := ociLayout(t, skDir)
	checkLayers(t, c, layers)
	if len(m1.Layers) != len(c.closure) {
		t.Fatalf("%d layers for a closure of %d", len(m1.Layers), len(c.closure))
	}

	crDir := filepath.Join(t.TempDir(), "crane")
	run(t, ctx, craneBin, "pull", "--insecure", "--format", "oci", ref, crDir)
	d2, _, layers2 := ociLayout(t, crDir)
	checkLayers(t, c, layers2)
	if d1 != d2 {
		t.Fatalf("skopeo got manifest %s, crane %s", d1, d2)
	}
	digest := strings.TrimSpace(run(t, ctx, craneBin, "digest", "--insecure", ref))
	if digest != d1.String() {
		t.Fatalf("crane digest %s, pulled %s", digest, d1)
	}

	// The config runs the top's one program, with its bin/ on PATH.
	cfg := run(t, ctx, craneBin, "config", "--insecure", ref)
	var cf v1.ConfigFile
	if err := json.Unmarshal([]byte(cfg), &cf); err != nil {
		t.Fatal(err)
	}
	if want := []string{c.top + "/bin/top"}; !slices.Equal(cf.Config.Entrypoint, want) || !slices.Equal(cf.Config.Env, []string{"PATH=" + c.top + "/bin"}) {
		t.Fatalf("config %s", cfg)
	}

	// A second server of the same cache reads the recorded digests.
	url2 := serve(t, c.dir, nil)
	if got := strings.TrimSpace(run(t, ctx, craneBin, "digest", "--insecure", host(url2)+"/"+repo(c.top))); got != d1.String() {
		t.Fatalf("second server: %s, first %s", got, d1)
	}
	// A server of a copy without records computes the same digests.
	fresh := t.TempDir()
	run(t, ctx, "cp", "-a", c.dir+"/.", fresh)
	if err := os.RemoveAll(filepath.Join(fresh, "oci")); err != nil {
		t.Fatal(err)
	}
	if recs, _ := filepath.Glob(filepath.Join(c.dir, "oci", "*.json")); len(recs) != len(c.closure) {
		t.Fatalf("%d layer records for %d paths: %v", len(recs), len(c.closure), recs)
	}
	url3 := serve(t, fresh, nil)
	if got := strings.TrimSpace(run(t, ctx, craneBin, "digest", "--insecure", host(url3)+"/"+repo(c.top))); got != d1.String() {
		t.Fatalf("server of a copy without records: %s, first %s", got, d1)
	}
}

// status does a GET and returns the status and body.
func status(t *testing.T, url, user, pass string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	if user != "" {
		req.SetBasicAuth(user, pass)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// Paths a cache does not serve are unknown to its registry: one whose
// narinfo is absent (refused by policy, never published), one whose
// closure is incomplete, and another tenant's. Without a reader's
// credentials everything is 401.
func TestNotServed(t *testing.T) {
	ctx := testctx.New(t, 5*time.Minute)
	a := newCache(t, ctx)
	b := newCache(t, ctx)
	readersA := server.Readers{}
	readersB := server.Readers{}
	for user, r := range map[string]server.Readers{"alice": readersA, "bob": readersB} {
		line := server.ReaderLine(user, "pw-"+user)
		f := filepath.Join(t.TempDir(), "readers")
		os.WriteFile(f, []byte(line+"\n"), 0o600)
		loaded, err := server.LoadReaders(f)
		if err != nil {
			t.Fatal(err)
		}
		for k, v := range loaded {
			r[k] = v
		}
	}
	// A refused path: its NAR is in a's cache, its narinfo is not (the
	// pusher writes the narinfo last, and only when policy passed).
	refused := testcache.StorePath("refused")
	testcache.PublishNAR(t, a.dir, a.sk, refused, []byte("refused NAR"))
	os.Remove(filepath.Join(a.dir, cachelayout.NarinfoKey(refused)))
	// An incomplete closure: a published path referring to an unpublished
	// one.
	incomplete := testcache.StorePath("incomplete")
	testcache.PublishNAR(t, a.dir, a.sk, incomplete, []byte("incomplete NAR"), refused)

	urlA := serve(t, a.dir, readersA)
	serve(t, b.dir, readersB)
	manifest := func(p string) string { return urlA + "/v2/" + repo(p) + "/manifests/latest" }

	if code, _ := status(t, manifest(a.top), "alice", "pw-alice"); code != http.StatusOK {
		t.Fatalf("a's own top: %d", code)
	}
	for what, u := range map[string]string{
		"refused path":      manifest(refused),
		"incomplete":        manifest(incomplete),
		"other tenant's":    manifest(b.top),
		"other tenant's v2": urlA + "/v2/" + repo(b.top) + "/tags/list",
		"unknown tag":       urlA + "/v2/" + repo(a.top) + "/manifests/v1",
		"unknown name":      urlA + "/v2/library/busybox/manifests/latest",
	} {
		code, body := status(t, u, "alice", "pw-alice")
		if code != http.StatusNotFound || !strings.Contains(body, "UNKNOWN") {
			t.Errorf("%s: %d %s, want 404 with an error code", what, code, body)
		}
		if code, _ := status(t, u, "", ""); code != http.StatusUnauthorized {
			t.Errorf("%s without credentials: %d, want 401", what, code)
		}
		if code, _ := status(t, u, "bob", "pw-bob"); code != http.StatusUnauthorized {
			t.Errorf("%s with another tenant's reader: %d, want 401", what, code)
		}
	}
	// Blobs of another tenant's image are unknown by digest too: b's
	// server knows them, a's does not.
	urlB := host(serve(t, b.dir, nil))
	craneBin := testproc.Crane(t)
	cfgDigest := strings.TrimSpace(run(t, ctx, craneBin, "manifest", "--insecure", urlB+"/"+repo(b.top)))
	var m v1.Manifest
	if err := json.Unmarshal([]byte(cfgDigest), &m); err != nil {
		t.Fatal(err)
	}
	// The config and the top's own layer (the last) are b's alone; the
	// closures share their content-addressed paths.
	for _, d := range []v1.Hash{m.Config.Digest, m.Layers[len(m.Layers)-1].Digest} {
		for _, name := range []string{repo(b.top), repo(a.top)} {
			if code, _ := status(t, urlA+"/v2/"+name+"/blobs/"+d.String(), "alice", "pw-alice"); code != http.StatusNotFound {
				t.Errorf("b's blob %s under %s on a's server: %d, want 404", d, name, code)
			}
		}
	}
	// A real client sees the 404 and the 401.
	skopeo := testproc.Tool(t, "skopeo", "apt-get install skopeo")
	out, err := exec.CommandContext(ctx, skopeo, "inspect", "--tls-verify=false", "--creds", "alice:pw-alice", "docker://"+host(urlA)+"/"+repo(refused)).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "manifest unknown") {
		t.Errorf("skopeo inspect of a refused path: %v %s", err, out)
	}
	if out, err := exec.CommandContext(ctx, skopeo, "inspect", "--tls-verify=false", "--creds", "alice:pw-alice", "docker://"+host(urlA)+"/"+repo(a.top)).CombinedOutput(); err != nil {
		t.Errorf("skopeo inspect with a reader's credentials: %v %s", err, out)
	}
	out, err = exec.CommandContext(ctx, skopeo, "inspect", "--tls-verify=false", "--no-creds", "docker://"+host(urlA)+"/"+repo(a.top)).CombinedOutput()
	if err == nil || !strings.Contains(strings.ToLower(string(out)), "unauthorized") {
		t.Errorf("skopeo inspect without credentials: %v %s", err, out)
	}
}

// Operators' tags: a tag names a published path (with an entrypoint of
// the operator's) under a repository of its own; every server of the
// cache serves it; an unpublished path cannot be tagged.
func TestTags(t *testing.T) {
	ctx := testctx.New(t, 5*time.Minute)
	c := newCache(t, ctx)
	st, err := local.New(c.dir)
	if err != nil {
		t.Fatal(err)
	}
	entry := []string{c.top + "/bin/top", "ignored-arg"}
	if err := oci.SetTag(ctx, st, "demo/closure:v1", c.top, entry); err != nil {
		t.Fatal(err)
	}
	if err := oci.SetTag(ctx, st, "demo/closure:v2", c.top, nil); err != nil {
		t.Fatal(err)
	}
	if err := oci.SetTag(ctx, st, "demo/closure:v3", testcache.StorePath("unpublished"), nil); !errors.Is(err, oci.ErrNotPublished) {
		t.Fatalf("tagging an unpublished path: %v", err)
	}
	for _, bad := range []string{"Demo:v1", "demo", "demo:", "nix/" + filepath.Base(c.top) + ":v1", "demo:-x", "demo/../x:v1"} {
		if err := oci.SetTag(ctx, st, bad, c.top, nil); !errors.Is(err, oci.ErrName) {
			t.Errorf("SetTag(%q): %v, want ErrName", bad, err)
		}
	}
	craneBin := testproc.Crane(t)
	url := serve(t, c.dir, nil)
	ls := strings.Fields(run(t, ctx, craneBin, "ls", "--insecure", host(url)+"/demo/closure"))
	if !slices.Equal(ls, []string{"v1", "v2"}) {
		t.Fatalf("crane ls: %v", ls)
	}
	var cf v1.ConfigFile
	if err := json.Unmarshal([]byte(run(t, ctx, craneBin, "config", "--insecure", host(url)+"/demo/closure:v1")), &cf); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(cf.Config.Entrypoint, entry) {
		t.Fatalf("v1 entrypoint %v, want %v", cf.Config.Entrypoint, entry)
	}
	// v2 is the same image as the path's own latest (same entrypoint).
	v2 := run(t, ctx, craneBin, "digest", "--insecure", host(url)+"/demo/closure:v2")
	if latest := run(t, ctx, craneBin, "digest", "--insecure", host(url)+"/"+repo(c.top)); v2 != latest {
		t.Fatalf("v2 %s, latest %s", v2, latest)
	}
	dir := filepath.Join(t.TempDir(), "v1")
	run(t, ctx, craneBin, "pull", "--insecure", "--format", "oci", host(serve(t, c.dir, nil))+"/demo/closure:v1", dir)
	_, _, layers := ociLayout(t, dir)
	checkLayers(t, c, layers)
	if err := oci.DeleteTag(ctx, st, "demo/closure:v1"); err != nil {
		t.Fatal(err)
	}
	if code, _ := status(t, url+"/v2/demo/closure/manifests/v1", "", ""); code != http.StatusNotFound {
		t.Fatalf("deleted tag: %d", code)
	}
}

// podman runs the image of a closure's top: the container holds nothing
// but the closure, and prints what the sample prints.
func TestPodmanRun(t *testing.T) {
	ctx := testctx.New(t, 5*time.Minute)
	c := newCache(t, ctx)
	podman := testproc.Tool(t, "podman", "apt-get install podman")
	// runc, not Debian's default crun: crun refuses a host whose cgroups
	// are mixed v1 and v2 with a controller on v2 ("cgroups in hybrid mode
	// not supported"), as this test's host has.
	runc := testproc.Tool(t, "runc", "apt-get install runc", "/usr/sbin/runc")
	ref := host(serve(t, c.dir, nil)) + "/" + repo(c.top)
	// A storage of the test's own, so nothing is left in the host's.
	root, runroot := t.TempDir(), t.TempDir()
	args := []string{"--runtime", runc, "--root", root, "--runroot", runroot, "--storage-driver", "vfs", "--cgroup-manager", "cgroupfs", "--events-backend", "none"}
	t.Cleanup(func() {
		exec.Command(podman, append(args, "rm", "--all", "--force")...).Run()
		exec.Command(podman, append(args, "system", "reset", "--force")...).Run()
	})
	// Limits within the test's own: podman's defaults (nofile 1048576)
	// are above the hard limits of a CI container, and raising them fails.
	out := run(t, ctx, podman, append(args, "run", "--rm", "--tls-verify=false", "--network", "none", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024", ref)...)
	for _, want := range []string{"greetings from a closure", "dep-a: " + c.message, "top: " + c.message} {
		if !strings.Contains(out, want) {
			t.Fatalf("podman run %s printed:\n%s\nwant %q", ref, out, want)
		}
	}
}

// The routes answer as the distribution spec says: the API check, HEAD
// and GET of manifests and blobs with their digests, JSON errors, no
// writes; a layer whose NAR was altered after its digest was recorded is
// cut short instead of served whole.
func TestRoutes(t *testing.T) {
	ctx := testctx.New(t, 5*time.Minute)
	c := newCache(t, ctx)
	url := serve(t, c.dir, nil)
	do := func(method, path string) (*http.Response, []byte, error) {
		req, _ := http.NewRequestWithContext(ctx, method, url+path, nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return nil, nil, err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		return resp, b, err
	}
	must := func(method, path string, code int) (*http.Response, []byte) {
		t.Helper()
		resp, b, err := do(method, path)
		if err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		if resp.StatusCode != code {
			t.Fatalf("%s %s: %d %s, want %d", method, path, resp.StatusCode, b, code)
		}
		return resp, b
	}
	if resp, _ := must(http.MethodGet, "/v2/", http.StatusOK); resp.Header.Get("Docker-Distribution-API-Version") != "registry/2.0" {
		t.Fatalf("API check headers: %v", resp.Header)
	}
	resp, body := must(http.MethodGet, "/v2/"+repo(c.top)+"/manifests/latest", http.StatusOK)
	var m v1.Manifest
	if err := json.Unmarshal(body, &m); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(body)
	digest := "sha256:" + hex.EncodeToString(sum[:])
	if resp.Header.Get("Docker-Content-Digest") != digest || resp.Header.Get("Content-Type") != "application/vnd.oci.image.manifest.v1+json" ||
		m.MediaType != "application/vnd.oci.image.manifest.v1+json" || m.Config.MediaType != "application/vnd.oci.image.config.v1+json" {
		t.Fatalf("manifest: %v %s", resp.Header, body)
	}
	for _, l := range m.Layers {
		if l.MediaType != "application/vnd.oci.image.layer.v1.tar" {
			t.Fatalf("layer media type %s", l.MediaType)
		}
	}
	head, _ := must(http.MethodHead, "/v2/"+repo(c.top)+"/manifests/"+digest, http.StatusOK)
	if head.Header.Get("Docker-Content-Digest") != digest || head.ContentLength != int64(len(body)) {
		t.Fatalf("HEAD manifest by digest: %v", head.Header)
	}
	last := m.Layers[len(m.Layers)-1]
	head, _ = must(http.MethodHead, "/v2/"+repo(c.top)+"/blobs/"+last.Digest.String(), http.StatusOK)
	if head.Header.Get("Docker-Content-Digest") != last.Digest.String() || head.ContentLength != last.Size {
		t.Fatalf("HEAD blob: %v", head.Header)
	}
	_, blob := must(http.MethodGet, "/v2/"+repo(c.top)+"/blobs/"+last.Digest.String(), http.StatusOK)
	if h, _, _ := v1.SHA256(strings.NewReader(string(blob))); h != last.Digest {
		t.Fatalf("blob hashes to %s, want %s", h, last.Digest)
	}
	for _, method := range []string{http.MethodPut, http.MethodPost, http.MethodDelete, http.MethodPatch} {
		if resp, b := must(method, "/v2/"+repo(c.top)+"/manifests/latest", http.StatusMethodNotAllowed); !strings.Contains(string(b), "UNSUPPORTED") {
			t.Fatalf("%s: %v %s", method, resp.Header, b)
		}
	}
	for path, code := range map[string]int{
		"/v2/" + repo(c.top) + "/blobs/sha256:xyz":        http.StatusBadRequest,
		"/v2/" + repo(c.top) + "/blobs/" + digest:         http.StatusNotFound, // a manifest is no blob
		"/v2/NIX/" + filepath.Base(c.top) + "/tags/list":  http.StatusNotFound,
		"/v2/" + repo(c.top) + "/uploads/x":               http.StatusNotFound,
		"/v2/" + repo(c.top) + "-x/manifests/latest":      http.StatusNotFound, // its hash, another name
		"/v2/" + repo(c.top) + "/manifests/sha256:" + "0": http.StatusBadRequest,
	} {
		if _, b := must(http.MethodGet, path, code); !strings.Contains(string(b), `"errors"`) {
			t.Errorf("%s: %s, want a JSON error", path, b)
		}
	}

	// The top's NAR is replaced by other bytes after its layer was
	// recorded: the layer is never served as the recorded digest (here it
	// is cut short: the bytes are no NAR).
	ni := func() string {
		b, _ := os.ReadFile(filepath.Join(c.dir, cachelayout.NarinfoKey(c.top)))
		for _, line := range strings.Split(string(b), "\n") {
			if u, ok := strings.CutPrefix(line, "URL: "); ok {
				return u
			}
		}
		t.Fatal("no URL in the narinfo")
		return ""
	}()
	nar := filepath.Join(c.dir, filepath.FromSlash(ni))
	orig, _ := os.ReadFile(nar)
	zw, _ := zstd.NewWriter(nil)
	if err := os.WriteFile(nar, zw.EncodeAll([]byte("nix-archive-1 but not this one"), nil), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, b, err := do(http.MethodGet, "/v2/"+repo(c.top)+"/blobs/"+last.Digest.String()); err == nil {
		if h, _, _ := v1.SHA256(strings.NewReader(string(b))); h == last.Digest {
			t.Fatal("a layer of an altered NAR was served as the recorded digest")
		}
		t.Fatalf("a layer of an altered NAR was served whole (%d bytes)", len(b))
	}
	// A valid NAR of the same size with one byte changed gives a tar of
	// the recorded size: served, and refused by the client, which checks
	// the digest.
	zr, err := zstd.NewReader(strings.NewReader(string(orig)))
	if err != nil {
		t.Fatal(err)
	}
	plain, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	i := strings.Index(string(plain), "top: ")
	if i < 0 {
		t.Fatal("no message in the top's NAR")
	}
	plain[i] = 'T'
	if err := os.WriteFile(nar, zw.EncodeAll(plain, nil), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.CommandContext(ctx, testproc.Crane(t), "pull", "--insecure", "--format", "oci", host(url)+"/"+repo(c.top), filepath.Join(t.TempDir(), "img")).CombinedOutput()
	// Whole when the recompressed NAR is no longer than the narinfo's
	// FileSize; cut short (EOF) when it is.
	if err == nil || !strings.Contains(string(out), "error verifying sha256 checksum") && !strings.Contains(string(out), "EOF") {
		t.Fatalf("crane pulled an image whose layer was altered: %v %s", err, out)
	}
	os.WriteFile(nar, orig, 0o644)
}
