package queue

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

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
// An upload of a scoped key is a commit (layoutCommit): its chunks but
// the last go to a subject of the upload's own, and the last, with the
// upload's id and chunk count, to the key's subject once the others are
// stored. Readers take the subject's last message and that upload's
// chunks, so uploads of one key at the same time, or one left unfinished,
// do not mix. Nothing is rolled up, so a builder needs no purge
// permission, and the stream refuses rollups: with one, any message could
// purge every builder's staging (ensureStaging). Earlier and unfinished
// uploads go to the garbage collector (CollectStaging), or expire. The
// meta is still written, for listings and the garbage collector.

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
		got, err := c.hashScoped(ctx, rctx, stream, id, want)
		switch {
		case err == nil:
			// Anyone may have written the key's meta: content is reused
			// only under a meta that names it (reuse rewrites that one),
			// or staging GC, which goes by metas, could take it as an
			// orphan; under another, it is uploaded again. Read only
			// when there is content: most Stages upload a new NAR.
			mctx, mcancel := context.WithTimeout(ctx, DefaultTimeout) // rctx may be spent on a large object
			meta, metaSeq, err := lastMeta(mctx, stream, key)
			mcancel()
			if err != nil && !errors.Is(err, ErrNotFound) && !errors.Is(err, ErrCorrupt) {
				return StagedInfo{}, fmt.Errorf("queue: stage %s: %w", key, err)
			}
			if meta == nil || meta.Deleted || meta.NUID != id {
				metaSeq = 0 // reuse refuses it
			}
			info := &jetstream.ObjectInfo{
				ObjectMeta: jetstream.ObjectMeta{Name: key, Opts: &jetstream.ObjectMetaOptions{ChunkSize: stageChunkSize}},
				Bucket:     BucketStaging, NUID: id, Size: got.size, Chunks: got.chunks, Digest: got.digest,
			}
			if c.reuse(ctx, stream, info, got.stored, metaSeq) {
				return StagedInfo{Key: key, Size: got.size, Digest: got.digest, Reused: true}, nil
			}
			// Too old to hand out, under another's meta, or staging GC
			// took it meanwhile: uploaded again below.
		case !errors.Is(err, ErrNotFound) && !errors.Is(err, ErrCorrupt):
			return StagedInfo{}, fmt.Errorf("queue: stage %s: %w", key, err)
		}
	}
	layout := layoutCommit
	if stream.CachedInfo().Config.AllowRollup {
		// Pushers of the version before layoutCommit may read it.
		layout = layoutRollup
	}
	info, err := c.putObject(ctx, stream, key, id, layout, r)
	if err != nil {
		return StagedInfo{}, fmt.Errorf("queue: stage %s: %w", key, mapJSError(err))
	}
	return StagedInfo{Key: key, Size: info.Size, Digest: info.Digest}, nil
}

// scopedContent is what hashScoped found under a chunk subject.
type scopedContent struct {
	size   uint64
	chunks uint32
	digest string    // as an object meta gives it
	stored time.Time // when its first chunk was stored
}

// hashScoped reads chunk id whole and fails with ErrCorrupt unless its
// sha256 is want (ErrNotFound when it holds nothing). Its time is its
// first chunk's, the first to expire.
func (c *Conn) hashScoped(ctx, rctx context.Context, stream jetstream.Stream, id string, want []byte) (scopedContent, error) {
	rc, size, last, err := c.openScoped(ctx, rctx, stream, id)
	if err != nil {
		return scopedContent{}, err
	}
	defer rc.Close()
	h := sha256.New()
	n, err := io.Copy(h, rc)
	if err != nil {
		return scopedContent{}, err
	}
	if !bytes.Equal(h.Sum(nil), want) {
		return scopedContent{}, fmt.Errorf("%w: staged content does not hash to its key", ErrCorrupt)
	}
	// n is size: chunkReader fails otherwise. The chunks are all full
	// but the last, and an empty object is one empty chunk.
	chunks := max(1, (size+stageChunkSize-1)/stageChunkSize)
	stored := last
	if cr, ok := rc.(*chunkReader); ok && !cr.first.IsZero() {
		stored = cr.first
	}
	return scopedContent{size: uint64(n), chunks: uint32(chunks), digest: jetstream.GetObjectDigestValue(h), stored: stored}, nil
}

// openScoped opens the content of chunk id: its size is that of its
// chunks (all full but the last, as Stage writes them), and when its last
// chunk was stored. The meta is not read: anyone may have written it.
//
// The subject's last message is the last chunk of an upload that wrote
// all its chunks (layoutCommit), with how many (chunksHeader) and the
// upload's id (uploadHeader): for a NAR of one chunk, most of them, that
// one get is the whole open, on any server version. A NAR of several
// chunks then reads that upload's other chunks, one by one, from the
// upload's own subject: other uploads of the key (two runners of one
// builder staging it at once, a runner stopped mid-upload) are never
// read.
//
// Uploads of layoutRollup (no upload id) have their chunks alone on the
// subject, and those before the count a stream info to count them (on a
// cluster of pre-2.11 servers it goes through the meta leader, and capped
// the pusher at about 120 results/s).
func (c *Conn) openScoped(ctx, rctx context.Context, stream jetstream.Stream, id string) (io.ReadCloser, uint64, time.Time, error) {
	subj := stagingChunksPrefix + id
	last, err := stream.GetLastMsgForSubject(rctx, subj)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil, 0, time.Time{}, fmt.Errorf("%w: nothing staged under %s", ErrNotFound, subj)
	}
	if err != nil {
		return nil, 0, time.Time{}, mapJSError(err)
	}
	upload := last.Header.Get(uploadHeader)
	n, err := strconv.ParseUint(last.Header.Get(chunksHeader), 10, 32)
	switch {
	case upload != "" && (err != nil || n == 0):
		return nil, 0, time.Time{}, fmt.Errorf("%w: the last chunk under %s has no count", ErrCorrupt, subj)
	case err != nil || n == 0:
		// Staged before the count was written.
		si, err := stream.Info(rctx, jetstream.WithSubjectFilter(subj))
		if err != nil {
			return nil, 0, time.Time{}, mapJSError(err)
		}
		if n = si.State.Subjects[subj]; n == 0 {
			return nil, 0, time.Time{}, fmt.Errorf("%w: nothing staged under %s", ErrNotFound, subj)
		}
	}
	size := (n-1)*stageChunkSize + uint64(len(last.Data))
	if n == 1 {
		return io.NopCloser(bytes.NewReader(last.Data)), size, last.Time, nil
	}
	if upload == "" {
		return &chunkReader{ctx: ctx, stream: stream, subj: subj, left: n, size: size}, size, last.Time, nil
	}
	if !validUpload(upload) {
		return nil, 0, time.Time{}, fmt.Errorf("%w: upload id %q under %s", ErrCorrupt, upload, subj)
	}
	return &chunkReader{ctx: ctx, stream: stream, subj: uploadSubject(id, upload), left: n - 1, upload: upload, tail: last.Data, size: size}, size, last.Time, nil
}

// validUpload reports whether an upload id is one subject token of the
// characters rand.Text writes.
func validUpload(u string) bool {
	if u == "" || len(u) > 64 {
		return false
	}
	for i := 0; i < len(u); i++ {
		if !('A' <= u[i] && u[i] <= 'Z' || '2' <= u[i] && u[i] <= '7') {
			return false
		}
	}
	return true
}

const (
	// chunksHeader, on the last chunk of a scoped upload, is how many
	// chunks the upload wrote.
	chunksHeader = "Provenix-Chunks"
	// uploadHeader, on every chunk of a layoutCommit upload, is the
	// upload's own random id.
	uploadHeader = "Provenix-Upload"
)

// chunkReader reads the first left messages of subj, one direct get
// ("next by subject") each: every role that reads staging may do direct
// gets, and no consumer is left behind. Each must carry upload (none for
// layoutRollup) and be full but the last, and tail follows them.
type chunkReader struct {
	ctx    context.Context
	stream jetstream.Stream
	subj   string
	seq    uint64
	left   uint64
	buf    []byte
	upload string
	tail   []byte
	// size is what openScoped said the content is; read counts it.
	size, read uint64
	// first is when the first chunk read was stored: the content's
	// oldest, the first to expire.
	first time.Time
}

func (r *chunkReader) Read(p []byte) (int, error) {
	for len(r.buf) == 0 {
		if r.left == 0 {
			if r.tail == nil {
				if r.read != r.size {
					// A subject of more chunks than its count, say: the
					// size openScoped derived is not the content's.
					return 0, fmt.Errorf("%w: staged content is %d bytes, its chunks say %d", ErrCorrupt, r.read, r.size)
				}
				return 0, io.EOF
			}
			r.buf, r.tail = r.tail, nil
			break
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
		if m.Header.Get(uploadHeader) != r.upload {
			return 0, fmt.Errorf("%w: a chunk under %s is not of upload %q", ErrCorrupt, r.subj, r.upload)
		}
		// All full but the last, as Stage writes them: the size openScoped
		// derived is the content's, and the work it takes is that size's.
		if last := r.left == 1 && r.tail == nil; last && len(m.Data) > stageChunkSize || !last && len(m.Data) != stageChunkSize {
			return 0, fmt.Errorf("%w: a chunk of %d bytes under %s", ErrCorrupt, len(m.Data), r.subj)
		}
		r.buf, r.seq = m.Data, m.Sequence
		if r.first.IsZero() {
			r.first = m.Time
		}
		r.left--
	}
	n := copy(p, r.buf)
	r.buf = r.buf[n:]
	r.read += uint64(n)
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
