/* micro guest: entry point, interrupt entry stubs and the CPL 3 round trip. */

#define SEL_KCODE 0x08
#define SEL_KDATA 0x10
#define SEL_UDATA 0x20
#define SEL_UCODE 0x28

	.code64

/* ------------------------------------------------------------------------------------------------
 * Entry: 64-bit mode, CPL 0, IF=0, RDI = boot info. vireo loads zeroed memory, so .bss needs no
 * clearing (and clearing it at CPL 0 would be slow under PVM). */
	.section .text.entry, "ax", @progbits
	.globl _start
	.type _start, @function
_start:
	cli
	mov $kstack_top, %rsp
	xor %ebp, %ebp
	call kmain              /* RDI still holds the boot info pointer */
1:	cli
	hlt
	jmp 1b
	.size _start, . - _start

	.text

/* ------------------------------------------------------------------------------------------------
 * Interrupt entry. Every stub leaves the same frame: [vector][error code][CPU frame]; vectors without
 * a CPU-pushed error code push a 0. With the CPU's 16-byte alignment of RSP on entry the frame is
 * 7 quadwords, plus 9 saved registers = 128 bytes, so RSP is 16-byte aligned at the call. */
	.macro ISR n
	.p2align 4
isr_\n:
	.if (\n == 8) || (\n == 10) || (\n == 11) || (\n == 12) || (\n == 13) || (\n == 14) || (\n == 17) || (\n == 21) || (\n == 29) || (\n == 30)
	.else
	pushq $0
	.endif
	pushq $\n
	jmp isr_common
	.endm

	.irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
	ISR \n
	.endr
	.irp n, 32,33,34,35,36,37,38,39,40,41,42,43,44,45,46,47
	ISR \n
	.endr
	ISR 80                  /* 0x50: MSI_VECTOR (virtio-msix) */
	ISR 255                 /* 0xFF: LAPIC_SPURIOUS_VECTOR */

	.p2align 4
isr_common:
	push %rax
	push %rcx
	push %rdx
	push %rsi
	push %rdi
	push %r8
	push %r9
	push %r10
	push %r11
	mov %rsp, %rdi
	cld
	call isr_dispatch
	pop %r11
	pop %r10
	pop %r9
	pop %r8
	pop %rdi
	pop %rsi
	pop %rdx
	pop %rcx
	pop %rax
	add $16, %rsp           /* vector and error code */
	iretq

/* ------------------------------------------------------------------------------------------------
 * uint64_t enter_user(int (*fn)(void) [rdi], void *ustack [rsi], uint64_t rflags [rdx])
 * Saves the callee-saved registers and RSP, then iretq's to fn at CPL 3. fn's return address is
 * user_ret, so returning from fn (or jumping there) executes int $0x80, whose gate (DPL 3) lands in
 * isr_user_return, which restores the saved context and returns fn's result from enter_user. */
	.globl enter_user
	.type enter_user, @function
enter_user:
	push %rbx
	push %rbp
	push %r12
	push %r13
	push %r14
	push %r15
	mov %rsp, kernel_saved_rsp(%rip)
	and $-16, %rsi
	sub $8, %rsi            /* as if fn had been called: RSP = 8 mod 16 */
	movq $user_ret, (%rsi)
	pushq $(SEL_UDATA | 3)  /* SS */
	pushq %rsi              /* RSP */
	pushq %rdx              /* RFLAGS */
	pushq $(SEL_UCODE | 3)  /* CS */
	pushq %rdi              /* RIP */
	iretq
	.size enter_user, . - enter_user

/* Runs at CPL 3: hand fn's return value back to the kernel. */
	.type user_ret, @function
user_ret:
	mov %eax, %edi
	int $0x80
	ud2
	.size user_ret, . - user_ret

/* Vector 0x80 (DPL 3 interrupt gate, so IF is now clear). From CPL 3 we are on TSS.RSP0; the frame
 * there is abandoned. From CPL 0 it is a bug: report it like any unexpected vector. */
	.globl isr_user_return
	.p2align 4
isr_user_return:
	testb $3, 8(%rsp)       /* CS of the interrupted context */
	jz 1f
	/* fall through with RDI = the user's value */

/* void resume_kernel(uint64_t value): also called from the #UD fallback in cpu.c. */
	.globl resume_kernel
	.type resume_kernel, @function
resume_kernel:
	mov %rdi, %rax
	mov $SEL_KDATA, %ecx
	mov %ecx, %ds
	mov %ecx, %es
	mov %ecx, %ss
	mov kernel_saved_rsp(%rip), %rsp
	pop %r15
	pop %r14
	pop %r13
	pop %r12
	pop %rbp
	pop %rbx
	ret
	.size resume_kernel, . - resume_kernel
1:	pushq $0
	pushq $0x80
	jmp isr_common

/* ------------------------------------------------------------------------------------------------ */
	.section .rodata
	.p2align 3
	.globl isr_table
isr_table:
	.irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
	.quad isr_\n
	.endr
	.irp n, 32,33,34,35,36,37,38,39,40,41,42,43,44,45,46,47
	.quad isr_\n
	.endr
	.globl isr_extra_table
isr_extra_table:
	.quad isr_80, isr_255

	.section .bss, "aw", @nobits
	.p2align 12
	.globl kstack_top, istack_top, ustack_top
kstack:	.skip 16384             /* CPL 0 stack for the main flow */
kstack_top:
istack:	.skip 16384             /* TSS.RSP0: interrupts taken at CPL 3 */
istack_top:
ustack:	.skip 16384             /* CPL 3 stack */
ustack_top:
	.p2align 3
kernel_saved_rsp:
	.skip 8

	.section .note.GNU-stack, "", @progbits
