#include <immintrin.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <pthread.h>
#define N (16u<<20)
static float *x,*y;
static int mode; static size_t CH=1024;
static double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
static void run(size_t lo,size_t hi){
  float a=1.5f,b=0.25f;
  if(mode==0){ for(size_t i=lo;i<hi;i++) y[i]=x[i]*a+b; }
  else if(mode==1||mode==2){ static __thread float buf[1<<20] __attribute__((aligned(64)));
    for(size_t i=lo;i<hi;i+=CH){ size_t n=hi-i<CH?hi-i:CH; for(size_t j=0;j<n;j++) buf[j]=x[i+j]*a+b;
      if(mode==1) memcpy(y+i,buf,n*4); else { void*d=y+i; const void*s=buf; size_t c=n*4; __asm__ volatile("rep movsb":"+D"(d),"+S"(s),"+c"(c)::"memory"); } } }
  else if(mode==3){ __m256 va=_mm256_set1_ps(a),vb=_mm256_set1_ps(b); for(size_t i=lo;i<hi;i+=8) _mm256_stream_ps(y+i,_mm256_fmadd_ps(_mm256_load_ps(x+i),va,vb)); _mm_sfence(); }
}
typedef struct{size_t lo,hi;}R; static void*th(void*p){R*r=p;run(r->lo,r->hi);return 0;}
int main(int c,char**v){ int T=atoi(v[1]); if(c>2) CH=atoi(v[2]);
  x=aligned_alloc(64,N*4); y=aligned_alloc(64,N*4); for(size_t i=0;i<N;i++){x[i]=i;y[i]=0;}
  const char*nm[]={"plain","memcpy","repmovsb","nt"}; double best[4][9];
  for(int r=0;r<9;r++) for(int m=0;m<4;m++){ mode=m; double t0=now();
    if(T==1) run(0,N); else { pthread_t p[2]; R rr[2]={{0,N/2},{N/2,N}}; for(int k=0;k<2;k++) pthread_create(&p[k],0,th,&rr[k]); for(int k=0;k<2;k++) pthread_join(p[k],0);} 
    best[m][r]=now()-t0; }
  for(int m=0;m<4;m++){ double s[9]; memcpy(s,best[m],sizeof s); for(int i=0;i<9;i++)for(int j=i+1;j<9;j++) if(s[j]<s[i]){double t=s[i];s[i]=s[j];s[j]=t;}
    printf("T=%d CH=%zu %-9s median %.3f ms  %.1f GB/s (2 streams)\n",T,CH,nm[m],s[4]*1e3,2.0*N*4/s[4]/1e9); }
  return (int)y[7]&0; }
