package queue

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/nats-io/nats.go/jetstream"
)

// Staging scopes.
//
// The Object Store keeps an object's meta under one subject token, the
// base64 of its key ($O.<bucket>.M.<b64 key>), so NATS permissions cannot
// hold a publisher to some keys: whoever may stage may write any meta,
// replace any object and point it at any chunks. What permissions can
// hold is a chunk subject with a token of its own. So a scoped key
// (ScopedKey: "<key>@<scope>", scope a digest of a builder id) keeps its
// content under a chunk subject derived from the key alone,
// $O.<bucket>.C.<scope>.<digest of key>, which only the users allowed
// $O.<bucket>.C.<scope>.> can publish to (RunnerPermissions gives each
// runner user its builder's scope). Readers of a scoped key read that
// subject and ignore the meta, which anyone may have forged: another
// publisher can neither replace nor corrupt what a builder staged under
// its scope. Whoever reads still checks the content (the pusher against
// the signed NAR hash, an importer against the content addresses).
//
// An upload under a scoped key starts with a rollup (Nats-Rollup: sub),
// which drops whatever the subject held (an earlier or failed upload of
// the same key), so a builder needs no purge permission; its meta is
// still written, for listings and the garbage collector.

// scopeLen is the length of a scope: 128 bits of sha256, in hex.
const scopeLen = 32

// StagingScope is the staging scope of builderID: the first 128 bits of
// its sha256, in hex (a subject token whatever the id holds).
func StagingScope(builderID string) string {
	h := sha256.Sum256([]byte(builderID))
	return hex.EncodeToString(h[:scopeLen/2])
}

// ScopedKey is key in builderID's staging scope.
func ScopedKey(key, builderID string) string { return key + "@" + StagingScope(builderID) }

// KeyScope returns the scope of a scoped key.
func KeyScope(key string) (string, bool) {
	i := strings.LastIndexByte(key, '@')
	if i < 0 || len(key)-i-1 != scopeLen {
		return "", false
	}
	s := key[i+1:]
	for j := 0; j < len(s); j++ {
		if !('0' <= s[j] && s[j] <= '9' || 'a' <= s[j] && s[j] <= 'f') {
			return "", false
		}
	}
	return s, true
}

// unscoped is key without its scope.
func unscoped(key string) string {
	if _, ok := KeyScope(key); ok {
		return key[:strings.LastIndexByte(key, '@')]
	}
	return key
}

// scopedChunkID is the chunk id (the part after $O.<bucket>.C.) of a
// scoped key: its scope, then a digest of the whole key.
func scopedChunkID(key, scope string) string {
	h := sha256.Sum256([]byte(key))
	return scope + "." + hex.EncodeToString(h[:16])
}

// stageScoped is Stage for a scoped key. A content-addressed key whose
// subject holds content that hashes to it is reused; anything else is
// uploaded again over it.
func (c *Conn) stageScoped(ctx, rctx context.Context, stream jetstream.Stream, key, scope string, r io.Reader) (StagedInfo, error) {
	id := scopedChunkID(key, scope)
	if want, ok := keyHash(unscoped(key)); ok {
		size, err := c.hashScoped(ctx, rctx, stream, id, want)
		switch {
		case err == nil:
			return StagedInfo{Key: key, Size: size, Reused: true}, nil
		case !errors.Is(err, ErrNotFound) && !errors.Is(err, ErrCorrupt):
			return StagedInfo{}, fmt.Errorf("queue: stage %s: %w", key, err)
		}
	}
	info, err := c.putObject(ctx, stream, key, id, true, r)
	if err != nil {
		return StagedInfo{}, fmt.Errorf("queue: stage %s: %w", key, mapJSError(err))
	}
	return StagedInfo{Key: key, Size: info.Size, Digest: info.Digest}, nil
}

// hashScoped reads chunk id whole and fails with ErrCorrupt unless its
// sha256 is want (ErrNotFound when it holds nothing).
func (c *Conn) hashScoped(ctx, rctx context.Context, stream jetstream.Stream, id string, want []byte) (uint64, error) {
	rc, size, err := c.openScoped(ctx, rctx, stream, id)
	if err != nil {
		return 0, err
	}
	defer rc.Close()
	h := sha256.New()
	n, err := io.Copy(h, rc)
	if err != nil {
		return 0, err
	}
	if !bytes.Equal(h.Sum(nil), want) {
		return 0, fmt.Errorf("%w: staged content does not hash to its key", ErrCorrupt)
	}
	if uint64(n) != size {
		// Chunks not as Stage writes them (all full but the last): the
		// size openScoped derived is not the content's.
		return 0, fmt.Errorf("%w: staged content is %d bytes, its chunks say %d", ErrCorrupt, n, size)
	}
	return size, nil
}

// openScoped opens the content of chunk id: its size is that of its
// chunks (all full but the last, as Stage writes them). The meta is not
// read: anyone may have written it.
//
// One direct get reads the first chunk and says how many follow it
// (firstChunk): for a NAR of one chunk, most of them, that is the whole
// open. Before, a stream info filtered on the subject counted the chunks
// (on the server: the subject's state, the whole stream info encoded, and
// an API audit advisory) and a second request read the last one. A NAR
// of several chunks still reads its last one, for its size.
func (c *Conn) openScoped(ctx, rctx context.Context, stream jetstream.Stream, id string) (io.ReadCloser, uint64, error) {
	subj := stagingChunksPrefix + id
	if !versionAtLeast(c.nc.ConnectedServerVersion(), 2, 11, 0) {
		return c.openScopedByInfo(ctx, rctx, stream, subj)
	}
	first, more, err := c.firstChunk(rctx, stream, subj)
	if errors.Is(err, errNoBatchGet) {
		// Answered by an older server of the cluster.
		return c.openScopedByInfo(ctx, rctx, stream, subj)
	}
	if err != nil {
		return nil, 0, err
	}
	if more == 0 {
		return io.NopCloser(bytes.NewReader(first.Data)), uint64(len(first.Data)), nil
	}
	last, err := stream.GetLastMsgForSubject(rctx, subj)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil, 0, fmt.Errorf("%w: nothing staged under %s", ErrNotFound, subj)
	}
	if err != nil {
		return nil, 0, mapJSError(err)
	}
	size := more*stageChunkSize + uint64(len(last.Data))
	return &chunkReader{ctx: ctx, stream: stream, subj: subj, buf: first.Data, seq: first.Sequence, left: more}, size, nil
}

// openScopedByInfo is openScoped for a server without batched direct
// gets (before nats-server 2.11, as Debian 12's 2.9.10): a stream info
// counts the chunks.
//
// An upload that marked its last chunk with the count (chunksHeader)
// needs no stream info: the subject's last message says how many chunks
// it has, and for one chunk, most NARs, it is the whole open. On a
// cluster of such servers the filtered stream info goes through the
// meta leader, and capped the pusher at about 120 results/s.
func (c *Conn) openScopedByInfo(ctx, rctx context.Context, stream jetstream.Stream, subj string) (io.ReadCloser, uint64, error) {
	last, err := stream.GetLastMsgForSubject(rctx, subj)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil, 0, fmt.Errorf("%w: nothing staged under %s", ErrNotFound, subj)
	}
	if err != nil {
		return nil, 0, mapJSError(err)
	}
	n, err := strconv.ParseUint(last.Header.Get(chunksHeader), 10, 32)
	if err != nil || n == 0 {
		// Staged before the count was written.
		si, err := stream.Info(rctx, jetstream.WithSubjectFilter(subj))
		if err != nil {
			return nil, 0, mapJSError(err)
		}
		if n = si.State.Subjects[subj]; n == 0 {
			return nil, 0, fmt.Errorf("%w: nothing staged under %s", ErrNotFound, subj)
		}
	}
	size := (n-1)*stageChunkSize + uint64(len(last.Data))
	if n == 1 {
		return io.NopCloser(bytes.NewReader(last.Data)), size, nil
	}
	return &chunkReader{ctx: ctx, stream: stream, subj: subj, left: n}, size, nil
}

// chunksHeader, on the last chunk of a scoped upload, is how many chunks
// the upload wrote.
const chunksHeader = "Provenix-Chunks"

// errNoBatchGet: the server answered a batched direct get as a plain one
// (it predates them), so the answer does not say how many messages follow.
var errNoBatchGet = errors.New("server without batched direct gets")

// firstChunk reads the first message on subj with a batched direct get
// of one message, whose answer also says how many more the subject holds
// (Nats-Num-Pending); ErrNotFound when it holds none. The server ends a
// batch with a second, empty message (end of batch), which the request
// no longer waits for and the connection drops.
func (c *Conn) firstChunk(ctx context.Context, stream jetstream.Stream, subj string) (_ *jetstream.RawStreamMsg, more uint64, _ error) {
	req, err := json.Marshal(struct {
		NextFor string `json:"next_by_subj"`
		Batch   int    `json:"batch"`
	}{subj, 1})
	if err != nil {
		return nil, 0, err
	}
	m, err := c.nc.RequestWithContext(ctx, jsAPI+"DIRECT.GET."+stream.CachedInfo().Config.Name, req)
	if err != nil {
		return nil, 0, mapJSError(err)
	}
	if status := m.Header.Get("Status"); status == "404" {
		return nil, 0, fmt.Errorf("%w: nothing staged under %s", ErrNotFound, subj)
	} else if status != "" {
		return nil, 0, fmt.Errorf("direct get of %s: status %s %s", subj, status, m.Header.Get("Description"))
	}
	if got := m.Header.Get(jetstream.SubjectHeader); got != subj {
		return nil, 0, fmt.Errorf("direct get of %s: answer is from %q", subj, got)
	}
	seq, err := strconv.ParseUint(m.Header.Get(jetstream.SequenceHeader), 10, 64)
	if err != nil {
		return nil, 0, fmt.Errorf("direct get of %s: sequence: %w", subj, err)
	}
	pending := m.Header.Get("Nats-Num-Pending")
	if pending == "" {
		return nil, 0, errNoBatchGet
	}
	more, err = strconv.ParseUint(pending, 10, 64)
	if err != nil {
		return nil, 0, fmt.Errorf("direct get of %s: pending: %w", subj, err)
	}
	return &jetstream.RawStreamMsg{Subject: subj, Sequence: seq, Data: m.Data}, more, nil
}

// chunkReader reads the first left messages of subj, one direct get
// ("next by subject") each: every role that reads staging may do
// direct gets, and no consumer is left behind.
type chunkReader struct {
	ctx    context.Context
	stream jetstream.Stream
	subj   string
	seq    uint64
	left   uint64
	buf    []byte
}

func (r *chunkReader) Read(p []byte) (int, error) {
	for len(r.buf) == 0 {
		if r.left == 0 {
			return 0, io.EOF
		}
		ctx, cancel := context.WithTimeout(r.ctx, DefaultTimeout)
		m, err := r.stream.GetMsg(ctx, r.seq+1, jetstream.WithGetMsgSubject(r.subj))
		cancel()
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return 0, fmt.Errorf("%w: %d chunks missing", ErrCorrupt, r.left)
		}
		if err != nil {
			return 0, mapJSError(err)
		}
		r.buf, r.seq = m.Data, m.Sequence
		r.left--
	}
	n := copy(p, r.buf)
	r.buf = r.buf[n:]
	return n, nil
}

func (r *chunkReader) Close() error { return nil }

// keyHash returns the sha256 a content-addressed StagingKey names.
func keyHash(key string) ([]byte, bool) {
	hexHash, ok := strings.CutPrefix(key, StagingKey(""))
	if !ok || len(hexHash) != 2*sha256.Size {
		return nil, false
	}
	sum, err := hex.DecodeString(hexHash)
	return sum, err == nil
}
