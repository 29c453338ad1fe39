/*
 * fenceproof.c - verification of fence proofs (docs/SECURITY.md section 4,
 * package fenceproof, wire/SPEC.md section 5 PROOF) with OpenSSL
 * libcrypto's Ed25519. The proof is the 64-byte signature followed by the
 * claims; the signature covers "tokend v2 fence proof" || claims.
 */
#include "tokend.h"

#include "codec.h"

#include <string.h>

#include <openssl/evp.h>

#define SIG_LEN 64
static const char fence_context[] = "tokend v2 fence proof";
#define CONTEXT_LEN (sizeof fence_context - 1)
/* The longest proof: signature, the claims with a 255-byte name and id. */
#define MAX_PROOF (SIG_LEN + 1 + 255 + 8 + 1 + 8 + 8 + 4 + 4 + 1 + 255 + 8)

static uint64_t be64(const unsigned char *p)
{
	uint64_t v = 0;
	for (int i = 0; i < 8; i++)
		v = v << 8 | p[i];
	return v;
}

static uint32_t be32(const unsigned char *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* Parse the claims c[0..n) into *out; 0 if they are well formed. */
static int parse_claims(const unsigned char *c, size_t n, tokend_fence_claims *out)
{
	size_t off = 0;
	if (n < 1 || c[0] == 0 || n < 1 + (size_t)c[0])
		return -1;
	out->name_len = c[0];
	memcpy(out->name, c + 1, out->name_len);
	off = 1 + out->name_len;
	if (n - off < 8 + 1 + 8 + 8 + 4 + 4 + 1)
		return -1;
	out->fence = be64(c + off);
	out->mode = (tokend_mode)c[off + 8];
	out->start = be64(c + off + 9);
	out->end = be64(c + off + 17);
	out->shard = be32(c + off + 25);
	out->epoch = be32(c + off + 29);
	off += 33;
	size_t wl = c[off++];
	if (wl == 0 || n - off != wl + 8)
		return -1;
	out->worker_id_len = wl;
	memcpy(out->worker_id, c + off, wl);
	out->issued_at_ms = be64(c + off + wl);
	if (!tkw_fence_valid(out->fence) || c[1 + out->name_len + 8] > TOKEND_EX || out->start >= out->end ||
	    out->epoch == 0 || out->epoch > TKW_MAX_EPOCH)
		return -1;
	return 0;
}

int tokend_fence_proof_verify(const unsigned char *pub32, const unsigned char *proof, size_t len,
			      tokend_fence_claims *out)
{
	tokend_fence_claims tmp;
	if (!pub32 || !proof || !out)
		return TOKEND_EINVAL;
	memset(out, 0, sizeof *out);
	if (len <= SIG_LEN || len > MAX_PROOF)
		return TOKEND_EINVAL;
	memset(&tmp, 0, sizeof tmp);
	if (parse_claims(proof + SIG_LEN, len - SIG_LEN, &tmp) != 0)
		return TOKEND_EINVAL;

	unsigned char msg[CONTEXT_LEN + MAX_PROOF];
	memcpy(msg, fence_context, CONTEXT_LEN);
	memcpy(msg + CONTEXT_LEN, proof + SIG_LEN, len - SIG_LEN);
	size_t msglen = CONTEXT_LEN + len - SIG_LEN;

	int rc = TOKEND_EAUTH;
	EVP_PKEY *key = EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, NULL, pub32, TOKEND_FENCE_KEY_LEN);
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();
	if (!key || !ctx) {
		rc = TOKEND_ENOMEM;
	} else if (EVP_DigestVerifyInit(ctx, NULL, NULL, NULL, key) == 1 &&
		   EVP_DigestVerify(ctx, proof, SIG_LEN, msg, msglen) == 1) {
		*out = tmp;
		rc = TOKEND_OK;
	}
	EVP_MD_CTX_free(ctx);
	EVP_PKEY_free(key);
	return rc;
}
