/* SPDX-License-Identifier: GPL-2.0 */
/*
 * kdbt_edge_fn(x): a few basic blocks (a 16-round mixing loop) whose final
 * ret is the last byte of the page-sized, page-aligned .text.kdbt_edge, the
 * last executable section of the module, so the byte after it is the first
 * byte of the unmapped guard page after the module's text. A decoder that
 * reads past the ret (15-byte instruction fetch windows) faults.
 * EDGE_FN_SIZE must be the exact size of the code below, which depends on
 * the kernel's configuration (SYM_FUNC_START's ENDBR with IBT; RET is
 * `jmp __x86_return_thunk` with return thunks, `ret; int3` with SLS);
 * scripts/test-modules.sh checks that the function ends at offset 4096.
 */
#include <linux/linkage.h>

#ifdef CONFIG_X86_KERNEL_IBT
#define EDGE_ENDBR_SIZE 4
#else
#define EDGE_ENDBR_SIZE 0
#endif
#if defined(CONFIG_MITIGATION_RETHUNK)
#define EDGE_RET_SIZE 5
#elif defined(CONFIG_MITIGATION_SLS)
#define EDGE_RET_SIZE 2
#else
#define EDGE_RET_SIZE 1
#endif
#define EDGE_FN_SIZE (EDGE_ENDBR_SIZE + 34 + EDGE_RET_SIZE)

	.section .text.kdbt_edge, "ax", @progbits
	.balign 4096
	.org 4096 - EDGE_FN_SIZE, 0xcc
SYM_FUNC_START_NOALIGN(kdbt_edge_fn)
	movq	%rdi, %rax
	movl	$16, %ecx
1:	leaq	7(%rax,%rax,4), %rax
	rolq	$13, %rax
	xorq	%rdi, %rax
	testb	$1, %al
	jz	2f
	addq	%rcx, %rax
2:	decl	%ecx
	jnz	1b
	notq	%rax
	RET
SYM_FUNC_END(kdbt_edge_fn)
