#include <immintrin.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <pthread.h>
#include <math.h>
#define N (16u<<20)
static size_t C=4096; static float *x,*y; static int mode;
static double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
static void row(const float*xr,float*yr){
  float s=0; for(size_t j=0;j<C;j++) s+=xr[j]; float m=s/C; float q=0; for(size_t j=0;j<C;j++){float d=xr[j]-m;q+=d*d;} float r=1.0f/sqrtf(q/C+1e-5f);
  if(mode==0){ for(size_t j=0;j<C;j++) yr[j]=(xr[j]-m)*r; }
  else if(mode==1){ __m256 vm=_mm256_set1_ps(m),vr=_mm256_set1_ps(r); for(size_t j=0;j<C;j+=8) _mm256_stream_ps(yr+j,_mm256_mul_ps(_mm256_sub_ps(_mm256_load_ps(xr+j),vm),vr)); }
  else { float buf[256] __attribute__((aligned(64))); for(size_t j0=0;j0<C;j0+=256){ for(size_t j=0;j<256;j++) buf[j]=(xr[j0+j]-m)*r; for(size_t j=0;j<256;j+=8) _mm256_stream_ps(yr+j0+j,_mm256_load_ps(buf+j)); } }
}
static void pipe(size_t lo,size_t hi,int nt){ float s=0; const float*x0=x+lo*C; for(size_t j=0;j<C;j++) s+=x0[j];
  for(size_t i=lo;i<hi;i++){ const float*xr=x+i*C; float*yr=y+i*C; float m=s/C; float q=0; for(size_t j=0;j<C;j++){float d=xr[j]-m;q+=d*d;} float r=1.0f/sqrtf(q/C+1e-5f);
    const float*xn=(i+1<hi)?x+(i+1)*C:xr; __m256 vm=_mm256_set1_ps(m),vr=_mm256_set1_ps(r); __m256 acc=_mm256_setzero_ps();
    for(size_t j=0;j<C;j+=8){ acc=_mm256_add_ps(acc,_mm256_load_ps(xn+j)); __m256 v=_mm256_mul_ps(_mm256_sub_ps(_mm256_load_ps(xr+j),vm),vr); if(nt) _mm256_stream_ps(yr+j,v); else _mm256_store_ps(yr+j,v);} 
    float t[8]; _mm256_storeu_ps(t,acc); s=t[0]+t[1]+t[2]+t[3]+t[4]+t[5]+t[6]+t[7]; } }
typedef struct{size_t lo,hi;}R; static void run(size_t lo,size_t hi){ if(mode>=3){pipe(lo,hi,mode==3);} else for(size_t i=lo;i<hi;i++) row(x+i*C,y+i*C); if(mode) _mm_sfence(); }
static void*th(void*p){R*r=p;run(r->lo,r->hi);return 0;}
#include <math.h>
int main(int c,char**v){ int T=atoi(v[1]); C=atoi(v[2]); size_t rows=N/C;
  x=aligned_alloc(64,N*4); y=aligned_alloc(64,N*4); for(size_t i=0;i<N;i++){x[i]=i%977;y[i]=0;}
  const char*nm[]={"plain","nt","buf+nt","pipe+nt","pipe"}; double best[5][11];
  for(int r=0;r<11;r++) for(int m=0;m<5;m++){ mode=m; double t0=now();
    if(T==1) run(0,rows); else { pthread_t p[2]; R rr[2]={{0,rows/2},{rows/2,rows}}; for(int k=0;k<2;k++) pthread_create(&p[k],0,th,&rr[k]); for(int k=0;k<2;k++) pthread_join(p[k],0);} 
    best[m][r]=now()-t0; }
  for(int m=0;m<5;m++){ double s[11]; memcpy(s,best[m],sizeof s); for(int i=0;i<11;i++)for(int j=i+1;j<11;j++) if(s[j]<s[i]){double t=s[i];s[i]=s[j];s[j]=t;}
    printf("T=%d C=%zu %-7s median %.3f ms  %.1f GB/s\n",T,C,nm[m],s[5]*1e3,2.0*N*4/s[5]/1e9); }
  return 0; }
